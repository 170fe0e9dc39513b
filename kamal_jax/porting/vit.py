"""Rule table for torchvision's VisionTransformer.

Module paths: `encoder.layers.encoder_layer_i.*` -> `backbone/encoder_layer_i/*`, the MLP's
Sequential indices `mlp.0`/`mlp.3` -> `mlp_0`/`mlp_3`, `encoder.ln` -> `backbone/ln`, `heads.head`
-> `fc`. Leaves the generic rules do not know: `class_token` and `encoder.pos_embedding`
(copied as is) and `nn.MultiheadAttention`'s fused `in_proj_weight`/`in_proj_bias` (q, k, v
stacked along the output axis; the Flax `in_proj` Dense keeps them fused, so the weight is only
transposed and the q/k/v split happens in the forward pass). LayerNorm weights are 1-D and so
become `scale` under the generic rule.

The position embedding must be for the module's `image_size` (224 for vit_b_16, 32 for
vit_tiny_4); inputs of another size are handled at run time by interpolating it.
"""

from __future__ import annotations

import math
import re
from typing import Mapping

from kamal_jax.models import vit as vit_models
from kamal_jax.porting.architecture import Architecture

RENAMES = (
    (r'^encoder/layers/(encoder_layer_\d+)/mlp/(\d+)$', r'backbone/\1/mlp_\2'),
    (r'^encoder/layers/(encoder_layer_\d+)', r'backbone/\1'),
    (r'^encoder/ln$', r'backbone/ln'),
    (r'^conv_proj$', r'backbone/conv_proj'),
    (r'^heads/head$', r'fc'),
)
HEAD_KEY = 'heads.head.weight'


def vit_leaf(path: str, leaf: str, value):
    if leaf in ('class_token', 'pos_embedding') and path in ('', 'encoder'):
        return ('params', 'backbone', leaf), value
    if leaf == 'in_proj_weight':
        return ('params',) + tuple(p for p in path.split('/') if p) + ('in_proj', 'kernel'), value.T
    if leaf == 'in_proj_bias':
        return ('params',) + tuple(p for p in path.split('/') if p) + ('in_proj', 'bias'), value
    return None


LEAF_RULES = (vit_leaf,)


def sizes(patch_weight, pos_embed, num_layers: int, mlp_weight) -> dict:
    """VisionTransformer fields the weights fix (all but the head count)."""
    n = int(pos_embed.shape[1]) - 1
    grid = math.isqrt(n)
    patch = int(patch_weight.shape[-1])
    return dict(hidden_dim=int(patch_weight.shape[0]), patch_size=patch, num_layers=num_layers,
                mlp_dim=int(mlp_weight.shape[0]),
                image_size=grid * patch if grid * grid == n else None)


def detect(state_dict: Mapping, hint: str | None = None) -> list[Architecture]:
    """The registered torchvision ViT configurations these weights fit exactly."""
    del hint
    need = ('conv_proj.weight', 'encoder.pos_embedding', HEAD_KEY,
            'encoder.layers.encoder_layer_0.mlp.0.weight')
    if not all(k in state_dict for k in need):
        return []
    layers = len({m.group(1) for k in state_dict
                  if (m := re.match(r'^encoder\.layers\.encoder_layer_(\d+)\.', k))})
    found = sizes(state_dict['conv_proj.weight'], state_dict['encoder.pos_embedding'], layers,
                  state_dict['encoder.layers.encoder_layer_0.mlp.0.weight'])
    num_classes = int(state_dict[HEAD_KEY].shape[0])
    return [Architecture(name, num_classes, None, (), 'vit', 'torchvision_vit', cfg['num_layers'])
            for name in vit_models.CONFIGS for cfg in [vit_models.config(name)]
            if all(cfg[k] == v for k, v in found.items())]
