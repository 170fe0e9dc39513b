"""One writer per folder: an exclusive OS file lock (a workdir, a records folder) naming its holder.

    lock = locks.acquire(path_of_lock_file, 'workdir runs/q')   # LockHeld if another run holds it
    ...
    lock.release()

Why an OS lock (`fcntl.flock`): the kernel drops it when its process ends however it ends (kill -9
included), so no stale lock is ever left to delete by hand. The lock file itself stays (deleting
it would let two runs lock two different files of one name); it holds the holder's host, process
id and start time, which a refused run names. On a file system without locks (some network
mounts answer ENOLCK or EOPNOTSUPP) the run goes on unlocked after one warning line: two runs on
one workdir are then the user's to avoid. Only this module knows about locks; no JAX, no torch.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import time

try:
    import fcntl
except ImportError:  # not POSIX: no OS lock; the run goes on unlocked (see the docstring)
    fcntl = None

log = logging.getLogger('kamal_jax')

_UNSUPPORTED = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class LockHeld(RuntimeError):
    """Another run holds the lock: one sentence naming it (host, process id, start time)."""


class Lock:
    """A held lock (or, on a file system without locks, a stand-in that holds nothing)."""

    def __init__(self, path: str, fd: int | None):
        self.path, self._fd = path, fd

    @property
    def held(self) -> bool:
        return self._fd is not None

    def release(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def __enter__(self) -> 'Lock':
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _holder(fd: int) -> str:
    """What the lock file says of its holder, as words."""
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        info = json.loads(os.read(fd, 4096) or b'{}')
        return (f"host {info['host']}, process {info['pid']}, started "
                f"{time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(info['started']))}")
    except (OSError, ValueError, KeyError, TypeError):
        return 'a process that has not yet said who it is'


def _refusal(what: str, fd: int, hint: str) -> LockHeld:
    return LockHeld(f'{what} is in use by another run ({_holder(fd)}); {hint}')


def _unsupported(path: str, e: OSError) -> None:
    log.warning('warning: %s cannot be locked (%s); going on without a lock, so make sure no other run '
                'uses this folder.', path, e.strerror or e)


def acquire(path: str, what: str, hint: str = 'wait for it to end, or choose another folder.') -> Lock:
    """Takes the exclusive lock of file `path` (created if missing) at once, or raises LockHeld
    naming `what` and the holder. The holder's host, process id and start time go into the file."""
    if fcntl is None:
        _unsupported(path, OSError(errno.ENOSYS, 'no fcntl on this platform'))
        return Lock(path, None)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        error = _refusal(what, fd, hint)
        os.close(fd)
        raise error from None
    except OSError as e:
        os.close(fd)
        if e.errno in _UNSUPPORTED:
            _unsupported(path, e)
            return Lock(path, None)
        raise
    info = json.dumps({'host': socket.gethostname(), 'pid': os.getpid(), 'started': time.time()}).encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, info, 0)
    return Lock(path, fd)


def check_free(path: str, what: str, hint: str = 'wait for it to end, or choose another folder.') -> None:
    """Raises LockHeld if another run holds `path`'s lock now; takes nothing and writes nothing
    (a missing lock file is a free one). For refusing a second run before it does any work."""
    if fcntl is None or not os.path.isfile(path):
        return
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _refusal(what, fd, hint) from None
    except OSError:
        pass  # no locks here: `acquire` says so once
    finally:
        os.close(fd)  # closing drops the shared lock this probe took
