"""Per-job resource limits: one torch thread (`single_thread`), and a memory cap, so that one
oversized job fails on its own instead of taking its node down (or being killed by the
kernel's OOM killer, with every other job on the worker).

`memory_cap(megabytes)` lowers the process's soft `RLIMIT_DATA` to what the process already
uses plus `megabytes`, for the duration of one job. Since Linux 4.7 that limit counts the heap
and every private writable mapping, which is where numpy and torch put their arrays; shared
memory (Ray's object store, read zero-copy) is not counted, so the cap measures what the job
itself allocates. An allocation past it fails, and the job raises `JobMemoryError` naming the
cap. The soft limit is restored afterwards, so a long-lived worker serves the next job normally.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from pathlib import Path

import torch


class JobMemoryError(MemoryError):
    """A job needed more memory than its cap (`cluster.sweep.memory_mb`)."""


def data_segment_bytes() -> int:
    """This process's data segment (VmData: heap + private writable mappings), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmData:"):
            return int(line.split()[1]) * 1024
    raise OSError("VmData not found in /proc/self/status")


def _is_allocation_failure(error: BaseException) -> bool:
    # numpy raises MemoryError; torch's CPU allocator raises RuntimeError with this text.
    return isinstance(error, MemoryError) or (
        isinstance(error, RuntimeError) and "can't allocate memory" in str(error)
    )


@contextlib.contextmanager
def memory_cap(megabytes: float | None) -> Iterator[None]:
    """Cap what the body may allocate at `megabytes` above the current use (None: no cap)."""
    if megabytes is None:
        yield
        return
    if megabytes <= 0:
        raise ValueError(f"a memory cap must be positive, got {megabytes} MB")
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    limit = data_segment_bytes() + int(megabytes * 2**20)
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_DATA, (limit, hard))
    try:
        yield
    except Exception as error:
        if _is_allocation_failure(error):
            raise JobMemoryError(
                f"the job needed more than its memory cap of {megabytes:g} MB "
                f"(cluster.sweep.memory_mb): {str(error).strip().splitlines()[0][:200]}"
            ) from error
        raise
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@contextlib.contextmanager
def single_thread() -> Iterator[None]:
    """One torch thread for the duration, then the caller's count back: float sums then run in
    one fixed order, as in every evaluator task with num_cpus=1."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
