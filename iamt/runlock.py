"""One writer per run directory: an exclusive `flock` on `RUN_DIR/.iamt.lock`.

Every command that writes a run directory (`train`, `evaluate`, `search`, `run`; a study on its
study directory) holds `hold_run_lock` around its work. A second writer is refused at once,
naming the holder's pid, command and host, which the holder writes into the lock file. Readers
(`iamt report`, the dashboard) never lock.

The lock belongs to the kernel: it goes away when the holding process exits, however it exits
(Ctrl-C, a crash, `kill -9`), so a stale lock file never blocks anyone. On a clean exit the
file is removed; a later writer that opened the removed file sees that it is gone and locks a
fresh one. Where the file system does not support flock (some FUSE or old NFS mounts), the
command warns and runs without the lock. No torch: the CLI takes the lock before any heavy
import.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import socket
import tempfile
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from iamt.io import FILE_MODE
from iamt.rundir import LOCK

# flock's answers for "this file system cannot lock" (not "someone holds it").
UNSUPPORTED = frozenset({errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EINVAL, errno.ENOSYS})


class RunDirectoryError(ValueError):
    """The output directory cannot be used as asked (changed config, not writable, ...)."""


class RunDirectoryInUseError(RunDirectoryError):
    """Another process holds the run directory's lock; the message names it."""


def check_writable(run_dir: Path) -> None:
    """Refuse an output directory that cannot be created or written, before any work.

    The test is a real one (a temporary file, removed at once): `os.access` says yes to root on
    read-only or virtual filesystems, and cannot see quotas or ACLs."""
    probe = run_dir if run_dir.exists() else _first_existing_parent(run_dir)
    if not probe.is_dir():
        raise RunDirectoryError(
            f"output directory {str(run_dir)!r} cannot be created: {str(probe)!r} is a file"
        )
    try:
        with tempfile.TemporaryFile(dir=probe):
            pass
    except OSError as error:
        raise RunDirectoryError(
            f"output directory {str(probe)!r} is not writable ({error.strerror or error})"
        ) from None


def _first_existing_parent(path: Path) -> Path:
    path = path.absolute()
    while not path.exists():
        path = path.parent
    return path


def lock_path(directory: Path) -> Path:
    return Path(directory) / LOCK


def describe_holder(directory: Path) -> str:
    """`pid 1234 (iamt run ...) on host`, read from the lock file; what is known of it."""
    try:
        holder = json.loads(lock_path(directory).read_text())
        return f"pid {holder['pid']} ({holder['command']}) on {holder['host']}"
    except (OSError, ValueError, KeyError, TypeError):  # written this very moment, or foreign
        return "another process (its details are not readable yet)"


def _created_directories(directory: Path) -> list[Path]:
    """Make `directory` and its missing parents; the ones made now, deepest first."""
    missing = []
    path = directory.absolute()
    while not path.exists():
        missing.append(path)
        path = path.parent
    directory.mkdir(parents=True, exist_ok=True)
    return missing


def _record_holder(handle: int, command: str) -> None:
    """Write who holds the lock into the locked file (in place: a rename would swap the inode
    that is locked). A full disk only costs the description, not the lock."""
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "command": command}
    holder["started"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    try:
        os.ftruncate(handle, 0)
        os.pwrite(handle, (json.dumps(holder) + "\n").encode(), 0)
    except OSError:
        pass


def _try_lock(path: Path) -> int | None:
    """An open, exclusively locked descriptor of `path`; None where flock is unsupported.
    Raises RunDirectoryInUseError when another process holds it."""
    while True:
        handle = os.open(path, os.O_RDWR | os.O_CREAT, FILE_MODE)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            raise RunDirectoryInUseError(
                f"run directory {str(path.parent)!r} in use by {describe_holder(path.parent)}; "
                "wait for it to finish or stop it (its lock goes when it exits)"
            ) from None
        except OSError as error:
            os.close(handle)
            if error.errno not in UNSUPPORTED:
                raise
            path.unlink(missing_ok=True)
            warnings.warn(
                f"{path.parent}: the file system does not support flock ({error.strerror}); "
                "running without the run-directory lock: start one writer at a time",
                stacklevel=3,
            )
            return None
        try:  # the holder before us may have removed the file after we opened it
            if os.stat(path).st_ino == os.fstat(handle).st_ino:
                return handle
        except FileNotFoundError:
            pass
        os.close(handle)  # locked a removed file: lock the fresh one instead


def _release(handle: int, path: Path) -> None:
    try:  # remove the file while still holding it, so nobody else is mid-way on it
        if os.stat(path).st_ino == os.fstat(handle).st_ino:
            os.unlink(path)
    except OSError:
        pass  # gone already, or not removable: the kernel lock goes with the close anyway
    os.close(handle)


@contextmanager
def hold_run_lock(directory: Path | str, command: str) -> Iterator[None]:
    """Hold `directory`'s exclusive lock while the block runs; `command` (e.g. `iamt run
    configs/demo.yaml`) is shown to a second writer. The directory is created if missing, and
    removed again afterwards if the block left it empty (a refused command leaves nothing)."""
    directory = Path(directory)
    created = _created_directories(directory)
    path = lock_path(directory)
    try:
        handle = _try_lock(path)
        try:
            if handle is not None:
                _record_holder(handle, command)
            yield
        finally:
            if handle is not None:
                _release(handle, path)
    finally:
        for made in created:  # deepest first; stops at the first that is not empty
            try:
                made.rmdir()
            except OSError:
                break
