"""Metrics: pure functions over features and probabilities."""

from .kid import kernel_inception_distance

__all__ = ["kernel_inception_distance"]
