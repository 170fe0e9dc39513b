"""File helpers shared by the teacher cache, the porting CLI and the zoo (no JAX, no torch)."""

from __future__ import annotations

import hashlib
import os


def sha256(path: str) -> str:
    """Content hash of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str, data: bytes) -> None:
    """Writes via a temporary file and a rename, so a killed run never leaves half a file."""
    tmp = f'{path}.tmp{os.getpid()}'
    with open(tmp, 'wb') as f:
        f.write(data)
    os.replace(tmp, path)
