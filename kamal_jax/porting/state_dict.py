"""Reads a PyTorch checkpoint into a flat state_dict of numpy arrays, whatever wraps it.

Formats by extension: `.safetensors` (no PyTorch needed) and torch.save files (`.pth .pt .th .tar
.bin .ckpt`), read with `torch.load(weights_only=True)`, PyTorch's restricted unpickler, so no code
from the file ever runs; anything else is refused with the reason. Training scripts wrap the
weights: a dict under `state_dict`, `model`, `net`, ... (EMA weights under `model_ema`, `ema`, ...,
taken only when asked), and key prefixes from `DataParallel` (`module.`), `torch.compile`
(`_orig_mod.`) or a wrapping module (`model.`, `net.`, `backbone.`); all of them are undone here.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Mapping

import numpy as np

from kamal_jax.progress import Progress

INTEGER_BUFFERS = (r'num_batches_tracked$',)  # integer by nature (batch norm's step counter)

TORCH_EXTENSIONS = ('.pth', '.pt', '.th', '.tar', '.bin', '.ckpt')
EXTENSIONS = TORCH_EXTENSIONS + ('.safetensors',)
# Why a format is refused: reading it could run code, or it holds no state_dict.
_REFUSED = {
    '.pkl': 'plain pickle runs code from the file when read',
    '.pickle': 'plain pickle runs code from the file when read',
    '.joblib': 'joblib files are pickles, which run code from the file when read',
    '.onnx': 'ONNX holds a graph, not a PyTorch state_dict',
    '.h5': 'Keras/HDF5 weights are not a PyTorch state_dict',
    '.keras': 'Keras weights are not a PyTorch state_dict',
}
WRAPPERS = ('state_dict', 'model_state_dict', 'model', 'net', 'state')
EMA_WRAPPERS = ('model_ema', 'ema', 'state_dict_ema', 'ema_state_dict')
PREFIXES = ('module.', '_orig_mod.', 'model.', 'net.', 'backbone.')


class CheckpointFormatError(ValueError):
    """The file is not a state_dict this module can read."""


@dataclasses.dataclass
class Checkpoint:
    """The tensors and how they were found (wrapper keys followed, prefixes stripped)."""
    tensors: dict[str, np.ndarray]
    wrappers: tuple[str, ...] = ()
    prefixes: tuple[str, ...] = ()
    extras: tuple[str, ...] = ()  # the outermost dict's other keys (epoch, best_prec1, ...)


def _extension(path: str) -> str:
    return os.path.splitext(path)[1].lower()


def _read_safetensors(path: str) -> dict:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
    try:
        return dict(load_file(path))
    except (TypeError, ValueError, SafetensorError):  # bfloat16 has no numpy dtype: go via torch
        try:
            from safetensors.torch import load_file as load_torch
        except ImportError:
            raise CheckpointFormatError(f'{path!r} holds tensors numpy cannot read (bfloat16?) and '
                                        'PyTorch is not installed to convert them.') from None
        return load_torch(path)


def _read_torch(path: str):
    import torch  # Deferred: only torch.save files need PyTorch (never torchvision).
    try:
        return torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # weights_only refuses pickled modules and arbitrary objects.
        first = (str(e).splitlines() or [''])[0]
        raise CheckpointFormatError(
            f'{path!r} cannot be read safely as a state_dict ({type(e).__name__}: {first}): '
            'torch.load(weights_only=True) refuses pickled modules and custom objects, which would '
            'run code from the file; save the weights instead: '
            'torch.save(model.state_dict(), "teacher.pth").') from None


def _is_tensor(value) -> bool:
    return isinstance(value, np.ndarray) or type(value).__name__ in ('Tensor', 'Parameter')


def _unwrap(obj, path: str, ema: bool) -> tuple[Mapping, tuple[str, ...], tuple[str, ...]]:
    """Follows wrapper keys down to a mapping of tensors."""
    followed, extras = [], ()
    keys = (EMA_WRAPPERS if ema else ()) + WRAPPERS
    while isinstance(obj, Mapping) and obj and not all(_is_tensor(v) for v in obj.values()):
        key = next((k for k in keys if isinstance(obj.get(k), Mapping) and obj[k]), None)
        if key is None:
            break
        if not followed:
            extras = tuple(str(k) for k in obj if k != key)
        followed.append(key)
        obj = obj[key]
    if not isinstance(obj, Mapping) or not obj or not all(_is_tensor(v) for v in obj.values()):
        what = (f'a dict with keys {sorted(map(str, obj))[:8]}' if isinstance(obj, Mapping)
                else f'a {type(obj).__name__}')
        raise CheckpointFormatError(
            f'{path!r} holds {what}, not a state_dict of tensors (looked under '
            f'{", ".join(keys)}); save one with torch.save(model.state_dict(), "teacher.pth").')
    if ema and not any(k in EMA_WRAPPERS for k in followed):
        raise CheckpointFormatError(f'{path!r} has no EMA weights (looked for '
                                    f'{", ".join(EMA_WRAPPERS)}); load it without ema.')
    return obj, tuple(followed), extras


def _strip_prefixes(tensors: dict) -> tuple[dict, tuple[str, ...]]:
    """Removes a prefix every key shares, repeatedly (`module._orig_mod.conv1.weight`)."""
    stripped = []
    while tensors:
        prefix = next((p for p in PREFIXES if all(k.startswith(p) for k in tensors)), None)
        if prefix is None:
            break
        stripped.append(prefix)
        tensors = {k[len(prefix):]: v for k, v in tensors.items()}
    return tensors, tuple(stripped)


def _to_numpy(value) -> np.ndarray:
    if isinstance(value, np.ndarray):
        return value
    value = value.detach().cpu()
    return (value.float() if value.is_floating_point() else value).numpy()


def read_checkpoint(path: str, ema: bool = False, integers: bool = False) -> Checkpoint:
    """The checkpoint's state_dict as float32 numpy arrays (integer buffers kept as they are).

    `integers`: any integer tensor is accepted (a whole model loaded strictly, whose index buffers
    are integer by nature), not only the known integer buffers of the rule tables."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f'teacher checkpoint {path!r} does not exist.')
    ext = _extension(path)
    if ext == '.safetensors':
        obj = _read_safetensors(path)
    elif ext in TORCH_EXTENSIONS:
        obj = _read_torch(path)
    else:
        why = _REFUSED.get(ext, 'its extension is not one this reader knows')
        raise CheckpointFormatError(f'{path!r} is refused: {why}; supported formats: '
                                    f'{" ".join(EXTENSIONS)}.')
    obj, wrappers, extras = _unwrap(obj, path, ema)
    tensors, prefixes = _strip_prefixes({str(k): v for k, v in obj.items()})
    progress = Progress(f'reading {os.path.basename(path)}', len(tensors), 'tensors')  # large checkpoints
    tensors = {k: _converted(v, progress) for k, v in tensors.items()}
    check_values(tensors, path, integers)
    return Checkpoint(tensors, wrappers, prefixes, extras)


def check_values(tensors: Mapping[str, np.ndarray], path: str, integers: bool = False) -> None:
    """Refuses integer or boolean tensors where weights belong (a quantised checkpoint would port to
    nonsense) and non-finite weights (a teacher that outputs NaN), naming the first such key."""
    for key, value in tensors.items():
        if any(re.search(p, key) for p in INTEGER_BUFFERS):
            continue
        dtype = np.asarray(value).dtype
        if integers and dtype.kind in 'iub':
            continue
        if dtype.kind != 'f' and dtype.name not in ('bfloat16', 'float8_e4m3fn', 'float8_e5m2'):
            raise CheckpointFormatError(f'{path!r}: {key} is a {dtype.name} tensor where float weights belong; '
                                        'save the float weights (a quantised model must be dequantised first).')
        if not np.all(np.isfinite(np.asarray(value, np.float32))):
            raise CheckpointFormatError(f'{path!r}: {key} holds non-finite values (NaN or infinity); '
                                        'this checkpoint cannot teach.')


def _converted(value, progress: Progress) -> np.ndarray:
    out = _to_numpy(value)
    progress.update()
    return out


def load_state_dict(path: str, ema: bool = False) -> dict[str, np.ndarray]:
    return read_checkpoint(path, ema).tensors
