"""Core ATen op -> jax.numpy / lax: the table the graph interpreter runs an exported teacher with.

Each entry takes the node's arguments as PyTorch passes them (arrays where the graph has tensors,
Python numbers and lists elsewhere) and follows PyTorch's semantics: NCHW layouts, OIHW kernels,
`alpha`/`beta` scalars, negative dims. int64 is int32 here (JAX's default); eval mode only.
"""

from __future__ import annotations

import math
import operator

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

DTYPES = {'float32': jnp.float32, 'float64': jnp.float32, 'float16': jnp.float16,
          'bfloat16': jnp.bfloat16, 'int64': jnp.int32, 'int32': jnp.int32, 'int16': jnp.int16,
          'int8': jnp.int8, 'uint8': jnp.uint8, 'bool': jnp.bool_}
_BIG = 2 ** 62  # PyTorch writes an open slice end as INT64_MAX


def _dims(x, dims):
    dims = [dims] if isinstance(dims, int) else list(dims or range(x.ndim))
    return tuple(d % x.ndim for d in dims)


def convolution(x, w, b, stride, padding, dilation, transposed, output_padding, groups):
    if transposed:
        raise NotImplementedError('transposed convolution')
    n = w.ndim - 2
    spatial = 'DHW'[-n:]
    y = lax.conv_general_dilated(
        x, w.astype(x.dtype), window_strides=tuple(stride), padding=[(p, p) for p in padding],
        rhs_dilation=tuple(dilation), feature_group_count=groups,
        dimension_numbers=('NC' + spatial, 'OI' + spatial, 'NC' + spatial))
    return y if b is None else y + b.astype(y.dtype).reshape((1, -1) + (1,) * n)


def _channel(v, x):
    return 1 if v is None else v.astype(x.dtype).reshape((1, -1) + (1,) * (x.ndim - 2))


def batch_norm(x, w, b, mean, var, momentum, eps):
    inv = lax.rsqrt(var.astype(jnp.float32) + eps).astype(x.dtype)
    y = (x - _channel(mean, x)) * _channel(inv, x) * _channel(w, x)
    return y + (0 if b is None else _channel(b, x)), None, None


def layer_norm(x, shape, w, b, eps):
    axes = tuple(range(x.ndim - len(shape), x.ndim))
    x32 = x.astype(jnp.float32)
    mean = x32.mean(axes, keepdims=True)
    rstd = lax.rsqrt(jnp.square(x32 - mean).mean(axes, keepdims=True) + eps)
    y = ((x32 - mean) * rstd).astype(x.dtype)
    y = y * w.astype(x.dtype) if w is not None else y
    return (y + b.astype(x.dtype) if b is not None else y), mean, rstd


def _pool_padding(size, k, s, p, d, ceil_mode):
    """(low, high) padding of one spatial dim, with ceil_mode's extra window on the right."""
    eff = d * (k - 1) + 1
    out = (size + 2 * p - eff) // s + 1
    if ceil_mode:
        out = -(-(size + 2 * p - eff) // s) + 1
        if (out - 1) * s >= size + p:  # PyTorch drops a last window that starts in the padding
            out -= 1
    return p, max(0, (out - 1) * s + eff - size - p)


def _window(x, kernel, stride, padding, dilation, ceil_mode):
    n = len(kernel)
    stride = list(stride) or list(kernel)
    padding = list(padding) * n if len(padding) == 1 else list(padding)
    dilation = list(dilation) * n if len(dilation) == 1 else list(dilation)
    pads = [_pool_padding(x.shape[x.ndim - n + i], kernel[i], stride[i], padding[i], dilation[i], ceil_mode)
            for i in range(n)]
    lead = x.ndim - n
    return ((1,) * lead + tuple(kernel), (1,) * lead + tuple(stride), [(0, 0)] * lead + pads,
            (1,) * lead + tuple(dilation))


def max_pool(x, kernel, stride=(), padding=(0,), dilation=(1,), ceil_mode=False):
    dims, strides, pads, dil = _window(x, kernel, stride, padding, dilation, ceil_mode)
    init = jnp.array(-jnp.inf, x.dtype)
    return lax.reduce_window(x, init, lax.max, dims, strides, pads, window_dilation=dil), None


def avg_pool(x, kernel, stride=(), padding=(0,), ceil_mode=False, count_include_pad=True,
             divisor_override=None):
    dims, strides, pads, _ = _window(x, kernel, stride, padding, (1,), ceil_mode)
    total = lax.reduce_window(x, jnp.array(0, x.dtype), lax.add, dims, strides, pads)
    if divisor_override:
        return total / divisor_override
    n = len(kernel)
    p = list(padding) * n if len(padding) == 1 else list(padding)
    # PyTorch divides by the window clipped to the padded input (explicit padding counted or not).
    ones = jnp.ones(x.shape[-n:], x.dtype)
    window_pads = pads[-n:]
    if count_include_pad:
        ones = jnp.pad(ones, [(q, q) for q in p])
        window_pads = [(0, max(0, hi - q)) for (_, hi), q in zip(pads[-n:], p)]
    count = lax.reduce_window(ones, jnp.array(0, x.dtype), lax.add, tuple(kernel), strides[-n:], window_pads)
    return total / count


def adaptive_avg_pool(x, output_size):
    """PyTorch's bins: start floor(i*n/out), end ceil((i+1)*n/out), per spatial dim."""
    for k, out in enumerate(output_size):
        axis = x.ndim - len(output_size) + k
        n = x.shape[axis]
        if n % out == 0:
            shape = x.shape[:axis] + (out, n // out) + x.shape[axis + 1:]
            x = x.reshape(shape).mean(axis + 1)
            continue
        bins = [lax.slice_in_dim(x, (i * n) // out, -(-((i + 1) * n) // out), axis=axis).mean(axis, keepdims=True)
                for i in range(out)]
        x = jnp.concatenate(bins, axis)
    return x


def view(x, shape):
    return jnp.reshape(x, tuple(shape))


def expand(x, size):
    lead = len(size) - x.ndim
    shape = [x.shape[i - lead] if (s == -1 and i >= lead) else s for i, s in enumerate(size)]
    return jnp.broadcast_to(x, tuple(shape))


def slice_(x, dim=0, start=None, end=None, step=1):
    n = x.shape[dim]
    start, end = start or 0, n if end is None or end >= _BIG else end
    return lax.slice_in_dim(x, *slice(start, end, step).indices(n), axis=dim % x.ndim)


def slice_scatter(x, src, dim=0, start=None, end=None, step=1):
    n = x.shape[dim]
    start, end = start or 0, n if end is None or end >= _BIG else end
    index = [slice(None)] * x.ndim
    index[dim % x.ndim] = slice(*slice(start, end, step).indices(n))
    return x.at[tuple(index)].set(src.astype(x.dtype))


def as_strided(x, size, stride, offset=0):
    """A strided view of `x`'s row-major storage: a reshape when it is one, else a gather."""
    size, stride, offset = tuple(size), tuple(stride), offset or 0
    contiguous, step = True, 1
    for n, s in reversed(list(zip(size, stride))):
        contiguous &= n == 1 or s == step
        step *= n
    if contiguous and not offset and math.prod(size) == x.size:
        return jnp.reshape(x, size)
    flat = np.asarray(offset) + sum(np.arange(n).reshape((-1,) + (1,) * (len(size) - 1 - i)) * s
                                    for i, (n, s) in enumerate(zip(size, stride)))
    return jnp.take(jnp.ravel(x), jnp.asarray(np.broadcast_to(flat, size)))


def constant_pad(x, pad, value=0):
    cfg = [(0, 0, 0)] * x.ndim
    for i in range(len(pad) // 2):
        cfg[x.ndim - 1 - i] = (pad[2 * i], pad[2 * i + 1], 0)
    return lax.pad(x, jnp.array(value, x.dtype), cfg)


def index(x, indices):
    """`x[i0, i1, ...]` with None for a full slice (advanced indexing, as PyTorch's)."""
    return x[tuple(slice(None) if i is None else i for i in indices)]


def split_sizes(x, sizes, dim=0):
    offsets = [sum(sizes[:i]) for i in range(1, len(sizes))]
    return jnp.split(x, offsets, axis=dim)


def split(x, size, dim=0):
    n = x.shape[dim]
    return split_sizes(x, [min(size, n - i) for i in range(0, n, size)], dim)


def gelu(x, approximate='none'):
    return jax.nn.gelu(x, approximate=approximate == 'tanh')


def softmax(x, dim, half_to_float=False):
    return jax.nn.softmax(x, axis=dim)


def _reduce(fn):
    def reduce(x, dims=None, keepdim=False, dtype=None):
        y = fn(x, axis=_dims(x, dims), keepdims=keepdim)
        return y if dtype is None else y.astype(DTYPES[dtype])
    return reduce


def _scaled(op):
    """add/sub with PyTorch's `alpha` multiplier of the second operand."""
    return lambda a, b, alpha=1: op(a, b if alpha == 1 else b * alpha)


def arange(start, end=None, step=1, dtype=None, **_):
    if end is None:
        start, end = 0, start
    return jnp.arange(start, end, step, dtype=DTYPES.get(dtype))


def _identity(x, *_, **__):
    return x


TABLE = {
    # convolution, normalisation, pooling
    'aten.convolution.default': convolution,
    'aten._native_batch_norm_legit_no_training.default': batch_norm,
    'aten.native_layer_norm.default': layer_norm,
    'aten.max_pool2d_with_indices.default': max_pool,
    'aten.avg_pool2d.default': avg_pool,
    'aten._adaptive_avg_pool2d.default': adaptive_avg_pool,
    # linear algebra
    'aten.addmm.default': lambda b, m1, m2, beta=1, alpha=1: beta * b + alpha * (m1 @ m2),
    'aten.mm.default': jnp.matmul,
    'aten.bmm.default': jnp.matmul,
    # shapes and copies
    'aten.view.default': view,
    'aten._unsafe_view.default': view,
    'aten.reshape.default': view,
    'aten.permute.default': lambda x, dims: jnp.transpose(x, tuple(dims)),
    'aten.expand.default': expand,
    'aten.slice.Tensor': slice_,
    'aten.select.int': lambda x, dim, i: lax.index_in_dim(x, i % x.shape[dim], dim % x.ndim, keepdims=False),
    'aten.unsqueeze.default': lambda x, dim: jnp.expand_dims(x, dim % (x.ndim + 1)),
    'aten.squeeze.dims': lambda x, dims: jnp.squeeze(x, tuple(d for d in _dims(x, dims) if x.shape[d] == 1)),
    'aten.squeeze.dim': lambda x, dim: jnp.squeeze(x, dim) if x.shape[dim] == 1 else x,
    'aten.cat.default': lambda xs, dim=0: jnp.concatenate(xs, axis=dim),
    'aten.constant_pad_nd.default': constant_pad,
    'aten.split_with_sizes.default': split_sizes,
    'aten.split.Tensor': split,
    'aten.index.Tensor': index,
    'aten.index_select.default': lambda x, dim, i: jnp.take(x, i, axis=dim),
    'aten.embedding.default': lambda w, i, *_: jnp.take(w, i, axis=0),
    'aten.roll.default': lambda x, shifts, dims=(): jnp.roll(x, tuple(shifts), tuple(dims) or None),
    'aten.flip.default': lambda x, dims: jnp.flip(x, tuple(dims)),
    'aten.slice_scatter.default': slice_scatter,
    'aten.as_strided.default': as_strided,
    'aten.clone.default': _identity,
    'aten.alias.default': _identity,
    'aten.lift_fresh_copy.default': _identity,
    'aten.detach.default': _identity,
    'aten.dropout.default': _identity,
    'aten.copy.default': lambda dst, src, non_blocking=False: jnp.broadcast_to(src, dst.shape).astype(dst.dtype),
    'aten._to_copy.default': lambda x, dtype=None, **_: x if dtype is None else x.astype(DTYPES[dtype]),
    # creation
    'aten.arange.start_step': arange,
    'aten.arange.start': arange,
    'aten.arange.default': arange,
    'aten.full.default': lambda size, value, dtype=None, **_: jnp.full(tuple(size), value, DTYPES.get(dtype)),
    'aten.scalar_tensor.default': lambda v, dtype=None, **_: jnp.asarray(v, DTYPES.get(dtype, jnp.float32)),
    'aten.full_like.default': lambda x, value, dtype=None, **_: jnp.full_like(x, value, DTYPES.get(dtype)),
    'aten.zeros.default': lambda size, dtype=None, **_: jnp.zeros(tuple(size), DTYPES.get(dtype, jnp.float32)),
    'aten.ones.default': lambda size, dtype=None, **_: jnp.ones(tuple(size), DTYPES.get(dtype, jnp.float32)),
    # elementwise
    'aten.add.Tensor': _scaled(jnp.add),
    'aten.add.Scalar': _scaled(jnp.add),
    'aten.sub.Tensor': _scaled(jnp.subtract),
    'aten.sub.Scalar': _scaled(jnp.subtract),
    'aten.rsub.Scalar': lambda a, b, alpha=1: b - alpha * a,
    'aten.mul.Tensor': jnp.multiply,
    'aten.mul.Scalar': jnp.multiply,
    'aten.div.Tensor': jnp.true_divide,
    'aten.div.Scalar': jnp.true_divide,
    'aten.div.Tensor_mode': lambda a, b, rounding_mode=None: (
        jnp.true_divide(a, b) if rounding_mode is None else
        jnp.floor_divide(a, b) if rounding_mode == 'floor' else jnp.trunc(jnp.true_divide(a, b))),
    'aten.neg.default': jnp.negative,
    'aten.abs.default': jnp.abs,
    'aten.exp.default': jnp.exp,
    'aten.log.default': jnp.log,
    'aten.sqrt.default': jnp.sqrt,
    'aten.rsqrt.default': lax.rsqrt,
    'aten.reciprocal.default': jnp.reciprocal,
    'aten.pow.Tensor_Scalar': jnp.power,
    'aten.pow.Tensor_Tensor': jnp.power,
    'aten.pow.Scalar': jnp.power,
    'aten.floor.default': jnp.floor,
    'aten.ceil.default': jnp.ceil,
    'aten.fmod.Scalar': jnp.fmod,
    'aten.fmod.Tensor': jnp.fmod,
    'aten.remainder.Scalar': jnp.remainder,
    'aten.remainder.Tensor': jnp.remainder,
    'aten.maximum.default': jnp.maximum,
    'aten.minimum.default': jnp.minimum,
    'aten.clamp.default': lambda x, lo=None, hi=None: jnp.clip(x, lo, hi),
    'aten.clamp.Tensor': lambda x, lo=None, hi=None: jnp.clip(x, lo, hi),
    'aten.where.self': jnp.where,
    'aten.eq.Scalar': jnp.equal, 'aten.eq.Tensor': jnp.equal,
    'aten.ne.Scalar': jnp.not_equal, 'aten.ne.Tensor': jnp.not_equal,
    'aten.lt.Scalar': jnp.less, 'aten.lt.Tensor': jnp.less,
    'aten.le.Scalar': jnp.less_equal, 'aten.le.Tensor': jnp.less_equal,
    'aten.gt.Scalar': jnp.greater, 'aten.gt.Tensor': jnp.greater,
    'aten.ge.Scalar': jnp.greater_equal, 'aten.ge.Tensor': jnp.greater_equal,
    'aten.logical_not.default': jnp.logical_not,
    'aten.logical_and.default': jnp.logical_and,
    'aten.bitwise_and.Tensor': jnp.bitwise_and,
    # activations
    'aten.relu.default': jax.nn.relu,
    'aten.sigmoid.default': jax.nn.sigmoid,
    'aten.tanh.default': jnp.tanh,
    'aten.erf.default': lax.erf,
    'aten.gelu.default': gelu,
    'aten.silu.default': jax.nn.silu,
    'aten.hardtanh.default': lambda x, lo=-1.0, hi=1.0: jnp.clip(x, lo, hi),
    'aten.hardswish.default': lambda x: x * jnp.clip(x + 3, 0, 6) / 6,
    'aten.hardsigmoid.default': lambda x: jnp.clip(x + 3, 0, 6) / 6,
    'aten._softmax.default': softmax,
    'aten._log_softmax.default': lambda x, dim, half_to_float=False: jax.nn.log_softmax(x, axis=dim),
    # reductions
    'aten.mean.dim': _reduce(jnp.mean),
    'aten.sum.dim_IntList': _reduce(jnp.sum),
    'aten.any.dim': lambda x, dim=None, keepdim=False: jnp.any(x, axis=dim, keepdims=keepdim),
    'aten.any.dims': lambda x, dim=None, keepdim=False: jnp.any(x, axis=_dims(x, dim), keepdims=keepdim),
    'aten.amax.default': _reduce(jnp.max),
    'aten.amin.default': _reduce(jnp.min),
    # Python operators on sizes and tuples
    'aten.sym_size.int': lambda x, dim: x.shape[dim],
    '_operator.getitem': operator.getitem,
    '_operator.mul': operator.mul,
    '_operator.add': operator.add,
    '_operator.sub': operator.sub,
    '_operator.floordiv': operator.floordiv,
    '_operator.truediv': operator.truediv,
    '_operator.neg': operator.neg,
    'math.ceil': math.ceil,
    'math.floor': math.floor,
}
