"""File helpers shared by the teacher cache, the porting CLI and the zoo (no JAX, no torch), and the
one error every failed write of a run becomes (`WriteError`: what, where, why)."""

from __future__ import annotations

import hashlib
import os
from typing import Callable


def sha256(path: str) -> str:
    """Content hash of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        for chunk in iter(lambda: f.read(1 << 20), b''):
            digest.update(chunk)
    return digest.hexdigest()


def write_atomic(path: str, data: bytes) -> None:
    """Writes via a temporary file and a rename, so a killed run never leaves half a file."""
    def write(tmp: str) -> None:
        with open(tmp, 'wb') as f:
            f.write(data)
    write_atomic_with(path, write)


def write_atomic_with(path: str, writer: Callable[[str], None]) -> None:
    """`writer(tmp)` writes the file (torch.save, ...), then a rename puts it at `path` whole."""
    tmp = f'{path}.tmp{os.getpid()}'
    writer(tmp)
    os.replace(tmp, path)


class WriteError(RuntimeError):
    """Something could not be written (a full disk, no permission, ...): one sentence saying what and where."""


# Words in an error that say a write failed, and how to say it. Orbax and TensorStore report a
# full disk as ValueError('... RESOURCE_EXHAUSTED ...'), not as an OSError.
_WRITE_FAILURES = (('RESOURCE_EXHAUSTED', 'no space left on device'),
                   ('No space left on device', 'no space left on device'),
                   ('Disk quota exceeded', 'disk quota exceeded'),
                   ('Read-only file system', 'read-only file system'),
                   ('PERMISSION_DENIED', 'permission denied'), ('Permission denied', 'permission denied'))


def write_failure(e: BaseException) -> str | None:
    """Why a write failed, in a few words, if `e` says a write failed (any OSError does); else None."""
    if isinstance(e, OSError) and e.strerror:
        return e.strerror[:1].lower() + e.strerror[1:]
    text = str(e)
    for words, reason in _WRITE_FAILURES:
        if words in text:
            return reason
    return 'an OS error' if isinstance(e, OSError) else None
