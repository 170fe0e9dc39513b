"""Shared test setup.

PyTorch (with torchvision) is imported before anything can import TensorFlow: the reverse order
aborts the process (both ship LLVM). The JAX core never imports either of them itself.
"""
import atexit
import os
import shutil
import tempfile

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('TF_ENABLE_ONEDNN_OPTS', '0')

# One XLA compilation cache for the whole session, shared with the runs tests start in subprocesses
# (CLI, notebook kernel, installed wheel, kill-and-resume): they compile the same small programs,
# and on a 2-core CPU compiling is much of a tiny run's time. Set before anything imports jax.
if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
    _xla_cache = tempfile.mkdtemp(prefix='kamal_jax_tests_xla_cache_')
    atexit.register(shutil.rmtree, _xla_cache, ignore_errors=True)
    os.environ['JAX_COMPILATION_CACHE_DIR'] = _xla_cache
    os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

try:
    import torch  # noqa: F401
    import torchvision  # noqa: F401
except ImportError:  # The JAX-only tests still run.
    pass
