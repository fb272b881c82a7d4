"""Datasets, .beton files, FFCV loaders and batched K-view augmentation."""
