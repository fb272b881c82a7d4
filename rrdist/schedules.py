"""Learning-rate schedules shared by pretraining methods and evaluations."""

from __future__ import annotations


def step_lr(base: float, epoch: int, epochs: int) -> float:
    """base, divided by 10 at 50% and again at 75% of the epochs (epoch counts from 0)."""
    milestones = (int(0.5 * epochs), int(0.75 * epochs))
    return base * 0.1 ** sum(epoch >= m for m in milestones)
