"""Shared test setup.

PyTorch (with torchvision) is imported before anything can import TensorFlow: the reverse order
aborts the process (both ship LLVM). The JAX core never imports either of them itself.
"""
import os

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:  # The JAX-only tests still run.
    pass
