"""kamal_jax: customise a compact multi-task student from heterogeneous teachers, without labels."""
__version__ = '0.1.0'


def load_student(path):
    """Returns `(module, variables, meta)` of an exported student; see `kamal_jax.export`."""
    from kamal_jax.export import load_student as _load
    return _load(path)
