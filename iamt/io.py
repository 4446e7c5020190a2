"""Atomic file writes: a reader (or a crash) never sees a half-written file.

Each writer goes to a temporary file in the destination's directory, fsyncs it, then
`os.replace`s it over the target, which is atomic on POSIX file systems. A full disk or a
quota (ENOSPC, EDQUOT) while writing raises `DiskFullError` naming the target; the temporary
file is removed and the target keeps its old content.
"""

from __future__ import annotations

import errno
import json
import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pandas as pd


def _umask() -> int:
    current = os.umask(0o022)  # reading the umask means setting it: put it straight back
    os.umask(current)
    return current


# mkstemp creates files readable by their owner only; a run directory is read by others too
# (the dashboard, colleagues on a shared file system), so files get the usual 0666 & ~umask.
FILE_MODE = 0o666 & ~_umask()


SPACE_ERRNOS = (errno.ENOSPC, errno.EDQUOT)  # a full disk, an exhausted quota
# How Rust's std::io::Error (safetensors wraps I/O errors in its own type) and Python's OSError
# print them, for errors that reach us only as text (a library's wrapper, a Ray task's error).
SPACE_MESSAGES = tuple(
    text for code in SPACE_ERRNOS for text in (f"(os error {code})", f"[Errno {code}]")
)


class DiskFullError(OSError):
    """No space left (ENOSPC or EDQUOT) while writing `path`; nothing was half-written."""

    def __init__(self, path: Path, cause: BaseException) -> None:
        code = cause.errno if isinstance(cause, OSError) and cause.errno else errno.ENOSPC
        super().__init__(code, f"no space left on device while writing {path}")
        self.path = path

    def __str__(self) -> str:
        return str(self.strerror)


def is_out_of_space(error: BaseException) -> bool:
    """ENOSPC or EDQUOT, raised by Python or reported by a library that wraps the OS error,
    here or anywhere down the chain of causes."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, OSError) and current.errno in SPACE_ERRNOS:
            return True
        if any(message in str(current) for message in SPACE_MESSAGES):
            return True
        current = current.__cause__ or current.__context__
    return False


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it replaces `path`, else it is removed.
    Running out of space anywhere on the way raises `DiskFullError(path)`."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        handle, temporary = tempfile.mkstemp(
            prefix=f".{path.name}.", suffix=".tmp", dir=path.parent
        )
    except OSError as error:
        raise (DiskFullError(path, error) if is_out_of_space(error) else error) from error
    os.close(handle)
    try:
        yield Path(temporary)
        with open(temporary, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(temporary, FILE_MODE)
        os.replace(temporary, path)
    except Exception as error:
        if is_out_of_space(error) and not isinstance(error, DiskFullError):
            raise DiskFullError(path, error) from error
        raise
    finally:
        if os.path.exists(temporary):
            os.unlink(temporary)


def write_bytes(path: Path, data: bytes) -> None:
    with atomic_path(path) as temporary:
        temporary.write_bytes(data)


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def write_json(path: Path, payload: Any) -> None:
    write_text(path, json.dumps(payload, indent=2, sort_keys=True, default=str) + "\n")


def write_csv(path: Path, frame: pd.DataFrame) -> None:
    """CSV with a fixed float format and '\\n' line endings, so equal data give equal bytes."""
    write_text(path, frame.to_csv(index=False, lineterminator="\n", float_format="%.6g"))
