"""Evaluations of a saved backbone: they read a run folder, never the training state."""
