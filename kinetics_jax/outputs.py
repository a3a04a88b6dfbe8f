"""Output files: one writer per output, unique temporaries, atomic replacement, and checks before compute.

Every job that writes an output (a checkpoint directory, a results jsonl, a samples file, a study directory)
uses this module, so the rules are the same everywhere:

- **One writer.** `exclusive(path)` holds an exclusive lock on the output for as long as the job writes it (an
  `flock` on `.<name>.lock` beside it, which records the holder's pid and host). A second writer, in another
  process or in this one, is refused at once with `OutputBusyError` naming the holder. The lock is released by
  the kernel when its holder dies, so a killed job never blocks the next run: a restarted job takes the stale
  lock file over, and removes it when it finishes.
- **Unique temporaries.** `temporary_path(path)` names a hidden sibling, `.<name>.<pid>.<random>.tmp`, that no
  other writer can share; `replacing(path)` writes a file there and renames it over `path` only when the write
  completed (fsync'ed first). An exception removes the temporary.
- **Checked first.** `check_writable(path)` runs before any compute: it refuses an output that is an existing
  directory (or, for a directory output, an existing file) and one whose directory cannot be created or written,
  so a long job never fails at its last step.

Errors are `OutputError` (a ValueError): bad input, reported by the scripts as one line.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import shutil
import socket
import threading
import uuid
from typing import IO, Iterator

_held: set[str] = set()  # lock files this process holds
_held_guard = threading.Lock()


class OutputError(ValueError):
    """An output path that cannot be written (refused before compute)."""


class OutputBusyError(OutputError):
    """Another writer holds the output."""


def _sibling(path: str, suffix: str) -> str:
    directory, name = os.path.split(os.path.abspath(os.fspath(path)))
    return os.path.join(directory, f".{name}{suffix}")


def lock_path(path: str | os.PathLike) -> str:
    """The lock file of an output: `.<name>.lock` in the output's directory."""
    return _sibling(os.fspath(path), ".lock")


def temporary_path(path: str | os.PathLike, suffix: str = ".tmp") -> str:
    """A fresh hidden sibling of `path` that no other writer (process or thread) can be given."""
    return _sibling(os.fspath(path), f".{os.getpid()}.{uuid.uuid4().hex[:12]}{suffix}")


def check_writable(path: str | os.PathLike, *, directory: bool | None = False) -> str:
    """Refuses an output that cannot be written, before any compute; returns its absolute path.

    `directory`: True for a directory output (a checkpoint, a study), which must not be an existing file; False
    for a file output, which must not be an existing directory; None for either (an output to be replaced). The first existing ancestor must be a directory this process can write (the missing
    ones are created by the writer), since outputs are written beside themselves and renamed: it is tested by
creating and removing a file there.
    """
    path = os.path.abspath(os.fspath(path))
    if directory is False and os.path.isdir(path):
        raise OutputError(f"output {path} is a directory; give a file path")
    if directory is True and os.path.exists(path) and not os.path.isdir(path):
        raise OutputError(f"output {path} is a file; give a directory path")
    parent = os.path.dirname(path)
    while not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise OutputError(f"cannot create output {path}: {parent} is not a directory")
    probe = os.path.join(parent, f".probe.{os.getpid()}.{uuid.uuid4().hex[:12]}")
    try:  # permissions, a read-only file system, quotas: only trying tells (root passes os.access checks)
        os.close(os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        os.unlink(probe)
    except OSError as e:
        raise OutputError(f"cannot write output {path}: {e.strerror} in {parent}") from None
    return path


def _holder(lock: str) -> str:
    try:
        with open(lock) as f:
            holder = f.read().strip()
    except OSError:
        holder = ""
    return holder or "unknown"


@contextlib.contextmanager
def exclusive(path: str | os.PathLike, *, directory: bool | None = False) -> Iterator[str]:
    """Holds the output's lock for the block (yields the output's absolute path); refuses a second writer.

    The output is checked first (`check_writable`; `directory` as there). Raises OutputBusyError when another
    process, or another open writer in this process, holds it. The lock file is created with the output's
    missing parent directories and removed on exit.
    """
    path = check_writable(path, directory=directory)
    lock = lock_path(path)
    with _held_guard:
        if lock in _held:
            raise OutputBusyError(f"output {path} is already being written by this process")
        _held.add(lock)
    try:
        fd = _acquire(path, lock)
    except BaseException:
        with _held_guard:
            _held.discard(lock)
        raise
    try:
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)  # while still locked: a waiting writer re-checks the inode and starts over
        os.close(fd)
        with _held_guard:
            _held.discard(lock)


def _acquire(path: str, lock: str) -> int:
    """An open, flock'ed descriptor of `lock`, which names it (no writer removed it in between)."""
    os.makedirs(os.path.dirname(lock), exist_ok=True)
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EAGAIN, errno.EACCES):
                raise
            raise OutputBusyError(f"output {path} is being written by another process ({_holder(lock)}); wait "
                                  f"for it to finish or choose another output") from None
        try:
            same = os.stat(lock).st_ino == os.fstat(fd).st_ino
        except FileNotFoundError:
            same = False
        if same:
            os.ftruncate(fd, 0)
            os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
            return fd
        os.close(fd)  # the previous holder removed the file after we opened it: take the new one


@contextlib.contextmanager
def replacing(path: str | os.PathLike, mode: str = "w", **open_kwargs) -> Iterator[IO]:
    """Opens a unique temporary beside `path` for writing; on a clean exit it is fsync'ed and renamed over
    `path` (created with its missing parent directories), on an exception removed. The file gets mode 0666 less
    the umask, like open()."""
    path = os.path.abspath(os.fspath(path))
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = temporary_path(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def remove(path: str | os.PathLike) -> None:
    """Removes a file or a directory tree, if present."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    elif os.path.lexists(path):
        os.unlink(path)
