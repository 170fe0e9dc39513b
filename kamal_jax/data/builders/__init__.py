"""TFDS builders of the datasets kamal_jax ships (imported lazily by `kamal_jax.data.datasets`).

Importing this package is cheap; each builder module imports tensorflow-datasets when imported.

| name | module | source |
|---|---|---|
| `kamal_digits` | `digits` | scikit-learn's bundled 8x8 digits (no files needed) |
| `kamal_cifar10` | `cifar10` | `cifar10.tar.gz` in the manual dir |
| `kamal_imagewoof` | `imagewoof` | `imagewoof.tar.gz` in the manual dir |
| `kamal_utkface` | `utkface` | `utkface.tar.gz` in the manual dir |
"""
