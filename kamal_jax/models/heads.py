"""Classifiers on top of a backbone: a flat `fc` (teachers, as PyTorch trains them) or one head per task."""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn


class Classifier(nn.Module):
    """Backbone + one linear layer over all classes; returns `(logits, features)`."""
    backbone: nn.Module
    num_classes: int
    dtype: Any = None  # compute dtype of the head (the backbone has its own); params stay float32

    @nn.compact
    def __call__(self, x, train: bool = False):
        pooled, features = self.backbone(x, train)
        return nn.Dense(self.num_classes, dtype=self.dtype, name='fc')(pooled), features


class MultiHeadNet(nn.Module):
    """Shared backbone + one linear head per task; returns `({task: logits}, features)`.

    A component net is a MultiHeadNet with one head, the target net has one head per target task.
    """
    backbone: nn.Module
    heads: Sequence[tuple[str, int]]
    dtype: Any = None

    @nn.compact
    def __call__(self, x, train: bool = False):
        pooled, features = self.backbone(x, train)
        logits = {task: nn.Dense(n, dtype=self.dtype, name=f'head_{task}')(pooled) for task, n in self.heads}
        return logits, features
