"""kamal_jax: customise a compact multi-task student from heterogeneous teachers, without labels."""
__version__ = '0.1.0'


def load_student(path, format=None):  # noqa: A002 (the file format)
    """Returns `(module, variables, card)` of an exported student; see `kamal_jax.export`.

    format: 'msgpack' or 'safetensors' (both are exported); None reads the msgpack file.
    """
    from kamal_jax.export import load_student as _load
    return _load(path, format)
