"""Rule table for timm's VisionTransformer (ViT and DeiT): `blocks.N.attn.qkv`, `cls_token`, ...

timm's names map onto the same Flax module as torchvision's: `patch_embed.proj` -> `conv_proj`,
`blocks.N.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}` -> `encoder_layer_N.{ln_1,
self_attention.in_proj,self_attention.out_proj,ln_2,mlp_0,mlp_3}`, `norm` -> `ln`, `head` -> `fc`.
timm's fused qkv is ordered (q, k, v) x heads x head_dim along its output, as torchvision's
`in_proj`, so it is only transposed. LayerNorm eps (1e-6), exact GELU and class-token pooling
are timm's defaults for these models.

The weights give the depth, width, MLP width, patch size (`patch_embed.proj.weight`'s kernel)
and image size (`pos_embed`'s grid) but not the number of heads: that comes from the name
(`vit_small_patch16_224` -> 6, from `models.vit.TIMM_SIZES`), given as the architecture, found in
a timm `pretrained_cfg`, or else assumed from the standard model of that width (and said so); a
name whose standard width is not the weights' is not used.
Not covered: distilled DeiT (`dist_token`), DeiT-3 / `no_embed_class`, register tokens, layer
scale; their extra keys are reported. At an input size other than the checkpoint's, the position
embedding is resized as torchvision does (timm models refuse other sizes unless built dynamic).
"""

from __future__ import annotations

import re
from typing import Mapping

from kamal_jax.models import vit as vit_models
from kamal_jax.porting import vit as torchvision_vit
from kamal_jax.porting.architecture import Architecture

_BLOCK = r'^blocks/(\d+)/'
RENAMES = (
    (r'^patch_embed/proj$', r'backbone/conv_proj'),
    (_BLOCK + r'norm1$', r'backbone/encoder_layer_\1/ln_1'),
    (_BLOCK + r'norm2$', r'backbone/encoder_layer_\1/ln_2'),
    (_BLOCK + r'attn/qkv$', r'backbone/encoder_layer_\1/self_attention/in_proj'),
    (_BLOCK + r'attn/proj$', r'backbone/encoder_layer_\1/self_attention/out_proj'),
    (_BLOCK + r'mlp/fc1$', r'backbone/encoder_layer_\1/mlp_0'),
    (_BLOCK + r'mlp/fc2$', r'backbone/encoder_layer_\1/mlp_3'),
    (r'^norm$', r'backbone/ln'),
    (r'^head$', r'fc'),
)
HEAD_KEY = 'head.weight'
_TOKENS = {'cls_token': 'class_token', 'pos_embed': 'pos_embedding'}


def timm_leaf(path: str, leaf: str, value):
    if path == '' and leaf in _TOKENS:
        return ('params', 'backbone', _TOKENS[leaf]), value
    return None


LEAF_RULES = (timm_leaf,)


def _heads_from_name(name: str | None):
    m = vit_models.TIMM_NAME.match(name or '')
    return (vit_models.TIMM_SIZES[m.group(2)][1], m.group(2)) if m else (None, None)


def detect(state_dict: Mapping, hint: str | None = None) -> list[Architecture]:
    """The timm ViT these weights describe; the head count from `hint` (a timm name) if given."""
    need = ('cls_token', 'pos_embed', 'patch_embed.proj.weight', 'blocks.0.mlp.fc1.weight', HEAD_KEY)
    if not all(k in state_dict for k in need):
        return []
    layers = len({m.group(1) for k in state_dict if (m := re.match(r'^blocks\.(\d+)\.', k))})
    dims = torchvision_vit.sizes(state_dict['patch_embed.proj.weight'], state_dict['pos_embed'],
                                 layers, state_dict['blocks.0.mlp.fc1.weight'])
    if dims['image_size'] is None:
        return []
    heads, word = _heads_from_name(hint)
    name, notes = hint, ()
    if word and vit_models.TIMM_SIZES[word][2] != dims['hidden_dim']:  # the name is another model's
        notes = (f'{hint} is {vit_models.TIMM_SIZES[word][2]} wide, the weights '
                 f'{dims["hidden_dim"]}: name ignored',)
        heads = None
    if heads is None:
        word = next((w for w, s in vit_models.TIMM_SIZES.items() if s[2] == dims['hidden_dim']), None)
        if word is None:
            return []
        heads = vit_models.TIMM_SIZES[word][1]
        name = f'vit_{word}_patch{dims["patch_size"]}_{dims["image_size"]}'
        notes += (f'{heads} heads assumed from the standard vit_{word}: the weights cannot tell; '
                  f'give the timm name to be sure',)
    if dims['hidden_dim'] % heads:
        return []
    options = {**dims, 'num_heads': heads}
    return [Architecture(name, int(state_dict[HEAD_KEY].shape[0]), None, tuple(options.items()),
                         'vit', 'timm_vit', layers, notes)]
