"""Vision Transformer (torchvision names; timm's ViT/DeiT port onto it too) returning the class-token feature and patch-token taps.

Computes what `torchvision.models.vision_transformer.VisionTransformer` computes in eval mode:
a patch-embedding conv (`conv_proj`), a learned class token, a learned position embedding,
pre-norm encoder layers (LayerNorm eps 1e-6, multi-head self-attention with a fused `in_proj`
as in `nn.MultiheadAttention`, MLP with exact-erf GELU), a final LayerNorm, and the head on
the class token (the generic `Classifier.fc`, torchvision's `heads.head`).

The position embedding is learned for `image_size`; at another input size its patch grid is
resized exactly as `torchvision.models.vision_transformer.interpolate_embeddings` does
(bicubic, align_corners=True, class-token entry kept), per axis so non-square inputs work.

Taps are patch tokens (class token dropped) after encoder layers at 1/4, 1/2, 3/4 and all of
the depth, taken from the residual stream (before any LayerNorm), reshaped to NHWC maps
(B, H/p, W/p, hidden) with stride p, so a CNN student can match them through a bridge.
"""

from __future__ import annotations

import functools
import math
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from kamal_jax.models.taps import Tap

_LN_EPS = 1e-6


def _cubic_weights(t: float, a: float = -0.75) -> tuple[float, float, float, float]:
    """PyTorch's cubic convolution coefficients for the taps at offsets -1, 0, 1, 2."""
    def near(x):  # |x| <= 1
        return ((a + 2) * x - (a + 3)) * x * x + 1

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

    return far(t + 1), near(t), near(1 - t), far(2 - t)


@functools.lru_cache(maxsize=None)
def bicubic_matrix(in_size: int, out_size: int) -> np.ndarray:
    """(out, in) matrix of `F.interpolate(mode='bicubic', align_corners=True)` along one axis."""
    m = np.zeros((out_size, in_size), np.float64)
    scale = (in_size - 1) / (out_size - 1) if out_size > 1 else 0.0
    for i in range(out_size):
        src = np.float32(scale) * np.float32(i)  # PyTorch computes the source index in float32.
        x0 = int(np.floor(src))
        t = float(src - x0)
        for k, w in zip(range(x0 - 1, x0 + 3), _cubic_weights(t)):
            m[i, min(max(k, 0), in_size - 1)] += w
    return m.astype(np.float32)


def resize_pos_embedding(pos: jax.Array, grid: tuple[int, int]) -> jax.Array:
    """(1, 1 + g*g, D) -> (1, 1 + grid[0]*grid[1], D), the class-token entry kept as is."""
    n = pos.shape[1] - 1
    g = math.isqrt(n)
    if g * g != n:
        raise ValueError(f'position embedding has {n} patch entries, not a square grid.')
    if (g, g) == tuple(grid):
        return pos
    img = pos[0, 1:].reshape(g, g, -1)
    mh, mw = jnp.asarray(bicubic_matrix(g, grid[0])), jnp.asarray(bicubic_matrix(g, grid[1]))
    hp = jax.lax.Precision.HIGHEST
    img = jnp.einsum('ah,hwd->awd', mh, img, precision=hp)
    img = jnp.einsum('bw,awd->abd', mw, img, precision=hp)
    return jnp.concatenate([pos[:, :1], img.reshape(1, grid[0] * grid[1], -1)], axis=1)


class SelfAttention(nn.Module):
    """`nn.MultiheadAttention(batch_first=True)` on (x, x, x): fused q/k/v `in_proj`, `out_proj`."""
    num_heads: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        b, n, d = x.shape
        h = self.num_heads
        qkv = nn.Dense(3 * d, name='in_proj', dtype=self.dtype)(x)
        q, k, v = (a.reshape(b, n, h, d // h) for a in jnp.split(qkv, 3, axis=-1))
        logits = jnp.einsum('bqhc,bkhc->bhqk', q / math.sqrt(d // h), k)
        attn = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(v.dtype)  # softmax in float32
        y = jnp.einsum('bhqk,bkhc->bqhc', attn, v).reshape(b, n, d)
        return nn.Dense(d, name='out_proj', dtype=self.dtype)(y)


class EncoderBlock(nn.Module):
    """x + attn(ln_1(x)), then + mlp(ln_2(.)); dropout is the identity (eval / rate 0)."""
    num_heads: int
    mlp_dim: int
    dtype: Any = None

    @nn.compact
    def __call__(self, x):
        d, dt = x.shape[-1], self.dtype
        y = SelfAttention(self.num_heads, dt, name='self_attention')(
            nn.LayerNorm(_LN_EPS, dtype=dt, name='ln_1')(x))
        x = x + y
        y = nn.LayerNorm(_LN_EPS, dtype=dt, name='ln_2')(x)
        y = nn.Dense(self.mlp_dim, dtype=dt, name='mlp_0')(y)
        y = nn.gelu(y, approximate=False)
        y = nn.Dense(d, dtype=dt, name='mlp_3')(y)
        return x + y


class VisionTransformer(nn.Module):
    """ViT trunk; returns `(pooled, features)`: the final-LN class token and NHWC patch taps."""
    image_size: int
    patch_size: int
    num_layers: int
    num_heads: int
    hidden_dim: int
    mlp_dim: int
    dtype: Any = None  # compute dtype; params stay float32

    def tap_layers(self) -> tuple[int, ...]:
        """1-based encoder-layer indices tapped: 1/4, 1/2, 3/4 and all of the depth."""
        return tuple(sorted({max(1, round(self.num_layers * q / 4)) for q in range(1, 5)}))

    def taps(self) -> tuple[Tap, ...]:
        return tuple(Tap(f'layer{i}', self.hidden_dim, self.patch_size) for i in self.tap_layers())

    @property
    def out_channels(self) -> int:
        return self.hidden_dim

    @nn.compact
    def __call__(self, x, train: bool = False):
        del train  # No batch statistics; dropout rates are 0 as in torchvision's defaults.
        b, hgt, wid, _ = x.shape
        p, d = self.patch_size, self.hidden_dim
        if hgt % p or wid % p:
            raise ValueError(f'input {hgt}x{wid} is not divisible by the patch size {p}.')
        gh, gw = hgt // p, wid // p
        x = nn.Conv(d, (p, p), (p, p), padding='VALID', dtype=self.dtype, name='conv_proj')(x)
        x = x.reshape(b, gh * gw, d)
        cls = self.param('class_token', nn.initializers.zeros, (1, 1, d))
        grid0 = self.image_size // p
        pos = self.param('pos_embedding', nn.initializers.normal(0.02), (1, 1 + grid0 * grid0, d))
        x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)).astype(x.dtype), x], axis=1)
        x = x + resize_pos_embedding(pos, (gh, gw)).astype(x.dtype)
        tapped = set(self.tap_layers())
        features = {}
        for i in range(self.num_layers):
            x = EncoderBlock(self.num_heads, self.mlp_dim, self.dtype, name=f'encoder_layer_{i}')(x)
            if i + 1 in tapped:
                features[f'layer{i + 1}'] = x[:, 1:].reshape(b, gh, gw, d)
        x = nn.LayerNorm(_LN_EPS, dtype=self.dtype, name='ln')(x)
        return x[:, 0], features


CONFIGS = {
    # name: (image_size, patch_size, num_layers, num_heads, hidden_dim, mlp_dim)
    'vit_b_16': (224, 16, 12, 12, 768, 3072),
    'vit_b_32': (224, 32, 12, 12, 768, 3072),
    # A small ViT for 32x32 images (tests, CIFAR-size teachers); build it in torchvision as
    # VisionTransformer(image_size=32, patch_size=4, num_layers=4, num_heads=2, hidden_dim=64,
    # mlp_dim=128, num_classes=N).
    'vit_tiny_4': (32, 4, 4, 2, 64, 128),
}


# timm's ViT/DeiT sizes: name word -> (num_layers, num_heads, hidden_dim, mlp_dim). Names read
# `{vit|deit}_{size}_patch{P}_{S}` (vit_small_patch16_224); the same Flax module computes them.
TIMM_SIZES = {
    'tiny': (12, 3, 192, 768),
    'small': (12, 6, 384, 1536),
    'base': (12, 12, 768, 3072),
    'large': (24, 16, 1024, 4096),
    'huge': (32, 16, 1280, 5120),
}
TIMM_NAME = re.compile(r'^(vit|deit)_(' + '|'.join(TIMM_SIZES) + r')_patch(\d+)_(\d+)$')


def config(name: str) -> dict:
    """The VisionTransformer fields of a named configuration (torchvision or timm name)."""
    if name in CONFIGS:
        size, patch, layers, heads, hidden, mlp = CONFIGS[name]
    elif m := TIMM_NAME.match(name):
        layers, heads, hidden, mlp = TIMM_SIZES[m.group(2)]
        patch, size = int(m.group(3)), int(m.group(4))
    else:
        raise ValueError(f'unknown ViT {name!r}; known: {", ".join(sorted(CONFIGS))} and timm names '
                         f'{{vit,deit}}_{{{",".join(TIMM_SIZES)}}}_patchP_S.')
    return dict(image_size=size, patch_size=patch, num_layers=layers, num_heads=heads,
                hidden_dim=hidden, mlp_dim=mlp)


def vit(name: str, *, widths=None, **overrides) -> VisionTransformer:
    """A named ViT configuration; `overrides` (e.g. `image_size`, read from a checkpoint) win."""
    if widths is not None:
        raise ValueError(f'{name} takes no widths (got {list(widths)}).')
    fields = {**config(name), **{k: v for k, v in overrides.items() if v is not None}}
    if fields['hidden_dim'] % fields['num_heads']:
        raise ValueError(f'{name}: hidden width {fields["hidden_dim"]} is not divisible by '
                         f'{fields["num_heads"]} heads.')
    return VisionTransformer(**fields)
