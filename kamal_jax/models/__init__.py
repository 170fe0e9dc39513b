"""Flax models that return `(logits, features)`; see `registry` for the architecture names."""
from kamal_jax.models.heads import Classifier, MultiHeadNet
from kamal_jax.models.registry import BACKBONES, backbone, classifier, multihead, register
from kamal_jax.models.taps import Tap, pair_by_depth
