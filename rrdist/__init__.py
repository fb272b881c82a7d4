"""rrdist: distributed self-supervised relational reasoning on Ray Train, Ray Tune and FFCV."""

__version__ = "0.1.0"
