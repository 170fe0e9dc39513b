"""Reads a PyTorch state_dict into numpy arrays: `.safetensors` without PyTorch, `.pth`/`.pt` safely."""

from __future__ import annotations

import os
from typing import Mapping

import numpy as np

_WRAPPER_KEYS = ('state_dict', 'model_state_dict', 'model')


class CheckpointFormatError(ValueError):
    """The file is not a state_dict this module can read."""


def load_state_dict(path: str) -> dict[str, np.ndarray]:
    if not os.path.isfile(path):
        raise FileNotFoundError(f'teacher checkpoint {path!r} does not exist.')
    if path.endswith('.safetensors'):
        from safetensors.numpy import load_file
        return dict(load_file(path))
    import torch  # Deferred: only .pth/.pt files need PyTorch (never torchvision).
    try:
        obj = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # weights_only refuses pickled modules and arbitrary objects.
        raise CheckpointFormatError(
            f'{path!r} is not a plain state_dict ({type(e).__name__}: {str(e).splitlines()[0]}). '
            'If it is a pickled whole model, save its weights instead: '
            'torch.save(model.state_dict(), "teacher.pth").') from None
    if isinstance(obj, Mapping):
        for key in _WRAPPER_KEYS:
            if key in obj and isinstance(obj[key], Mapping):
                obj = obj[key]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointFormatError(
            f'{path!r} holds a {type(obj).__name__}, not a state_dict of tensors; save one with '
            'torch.save(model.state_dict(), "teacher.pth").')
    return {k.removeprefix('module.'): v.detach().cpu().float().numpy() if v.is_floating_point()
            else v.detach().cpu().numpy() for k, v in obj.items()}
