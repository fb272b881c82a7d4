"""Pretraining on Ray Train: the worker loop, checkpoints and the driver that builds the TorchTrainer."""
