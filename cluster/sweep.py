"""The robustness sweep fanned out over Ray: backpressure, retries, resume, progress.

`run_sweep_on_ray` replaces only the loop of `robustness.runner.run_sweep_locally`:
`prepare_sweep` before it and `finish_sweep` after it are shared, so a sweep gives the same
`results.csv` in one process or on Ray.

- The models and the evaluation split go into the object store once; every task receives
  the same ObjectRefs (Ray resolves them to zero-copy reads on each node), never a fresh copy.
- At most `max_in_flight` tasks are outstanding; the driver waits for one to finish before
  submitting the next, so a sweep of thousands of jobs never floods the scheduler.
- The driver writes each finished job's part file as soon as it arrives, so an interrupted
  sweep resumes where it stopped (`Sweep.pending` skips jobs with a part file).
- A job that raises, or whose worker dies, is resubmitted up to `max_retries` times; if it
  still fails it is recorded in `failures.csv` and the sweep goes on.

`init_local_ray` starts an embedded single-machine Ray on 127.0.0.1 (tests, the default);
`connect` joins an existing cluster (the user's explicit choice, e.g. RAY_ADDRESS).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import ray
import ray._private.ray_constants as ray_constants
import torch
from ray.exceptions import RayError, RayTaskError
from torch import nn

from iamt.progress import progress_bar
from iamt.vocabulary import Family
from robustness.config import Precision
from robustness.jobs import DRIFT_SAMPLES, Job, run_job
from robustness.limits import JobMemoryError, memory_cap
from robustness.precision import prepare_models
from robustness.results import failure_record, write_part
from robustness.runner import Sweep

LOOPBACK = "127.0.0.1"
# Keeps every process of an embedded Ray on loopback; without it Ray rewrites 127.0.0.1 to the
# machine's interface address (DESIGN §7).
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"

OnUpdate = Callable[[int, int, int], None]  # (done, failed, total), like run_sweep_locally


# --------------------------------------------------------------------------- starting Ray


def keep_ray_on_loopback() -> None:
    """Make every Ray process this driver starts (embedded Ray, `ray.cluster_utils.Cluster`)
    bind to 127.0.0.1. The driver read the variable when it imported ray, and the processes
    it spawns read it again: set both. Called here rather than at import, so that `connect`
    to a real cluster keeps Ray's normal address detection."""
    os.environ.setdefault(LOOPBACK_ENV, "0")
    if os.environ[LOOPBACK_ENV] == "0":
        ray_constants.ENABLE_RAY_CLUSTER = False


# Ray's notice when a new local cluster turns token auth on by default. Its advice (set
# RAY_AUTH_MODE=disabled to opt out) is wrong for an embedded Ray that listens on loopback
# only, so the embedded start drops that one record; auth itself stays as Ray sets it.
AUTH_ENABLED_NOTICE = "Token authentication is enabled for this Ray cluster."
AUTH_SETUP_LOGGER = "ray._private.authentication.authentication_token_setup"


class _DropAuthEnabledNotice(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith(AUTH_ENABLED_NOTICE)


@contextlib.contextmanager
def _without_auth_enabled_notice() -> Iterator[None]:
    logger, notice_filter = logging.getLogger(AUTH_SETUP_LOGGER), _DropAuthEnabledNotice()
    logger.addFilter(notice_filter)
    try:
        yield
    finally:
        logger.removeFilter(notice_filter)


def init_local_ray(num_cpus: int | None = None, resources: dict[str, float] | None = None) -> None:
    """Start an embedded single-machine Ray bound to 127.0.0.1; a no-op if Ray is running.
    Token auth is left to Ray (on by default for a new local cluster), without its notice."""
    if ray.is_initialized():
        return
    keep_ray_on_loopback()
    with _without_auth_enabled_notice():
        _init_embedded_ray(num_cpus, resources)


def _init_embedded_ray(num_cpus: int | None, resources: dict[str, float] | None) -> None:
    ray.init(
        address="local",  # always a new instance: never a stale or RAY_ADDRESS cluster
        num_cpus=num_cpus,
        resources=resources,
        include_dashboard=False,
        _node_ip_address=LOOPBACK,
        logging_level=logging.WARNING,
        log_to_driver=False,  # tqdm owns the terminal; worker logs stay in Ray's session dir
        configure_logging=True,
    )


class ClusterUnreachableError(ConnectionError):
    """The Ray cluster to join does not answer; the message names the address."""


def check_reachable(address: str, timeout_s: float = 5.0) -> None:
    """Fail fast when `host:port` (or `ray://host:port`) does not answer: `ray.init` would
    retry for minutes. `auto` is left to Ray, which fails at once when no cluster runs."""
    if address in {"auto", "local"}:
        return
    target = address.removeprefix("ray://")
    host, separator, port = target.rpartition(":")
    if not separator or not port.isdigit():
        raise ClusterUnreachableError(
            f"Ray address {address!r} is not host:port, ray://host:port or auto "
            "(the Jobs API's http:// address is for `ray job submit`, not for joining)"
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout_s).close()
    except OSError as error:
        raise ClusterUnreachableError(
            f"no Ray cluster answers at {address!r} ({error.strerror or error}); start one with "
            "`ray start --head`, or leave --address/RAY_ADDRESS unset for an embedded local Ray"
        ) from None


def connect(address: str) -> None:
    """Join an existing Ray cluster (e.g. `auto` or RAY_ADDRESS); a no-op if already joined."""
    if ray.is_initialized():
        return
    check_reachable(address)
    ray.init(address=address, logging_level=logging.WARNING)


# --------------------------------------------------------------------------- the task


def threads_for(cpus: float) -> int:
    """Torch threads from a CPU share: a result must not depend on the node's core count."""
    return max(1, int(cpus))


# Each worker process keeps the models of the sweep it serves, deserialised and on its device:
# a task then costs its own work, not another copy of the models (measured: 4.4× the
# in-process time on 0.1 s jobs when every task deserialised them).
_WORKER_MODELS: dict[str, dict[str, nn.Module]] = {}


def _models_on(
    reference: ray.ObjectRef, device: torch.device, precision: Precision
) -> dict[str, nn.Module]:
    key = f"{reference.hex()}/{device}/{precision}"
    if key not in _WORKER_MODELS:
        _WORKER_MODELS.clear()  # one sweep's models at a time
        models: dict[str, nn.Module] = ray.get(reference)
        _WORKER_MODELS[key] = prepare_models(models, device, precision)
    return _WORKER_MODELS[key]


@ray.remote
def evaluate_job(
    job: Job,
    models_box: list[ray.ObjectRef],
    images: np.ndarray,
    labels: np.ndarray,
    memory_mb: float | None = None,
    drift_samples: int = DRIFT_SAMPLES,
) -> tuple[list[dict[str, Any]], float, str, str]:
    """Run one job on a worker: (rows, wall seconds, node, worker).

    `images`/`labels` arrive as numpy arrays: Ray maps them from the object store without a
    copy (torch tensors would be copied whole into every task). `models_box` holds the models'
    ObjectRef unresolved, so that each worker fetches the models once (`_models_on`).
    `memory_mb` caps what the job may allocate (`robustness.limits.memory_cap`)."""
    context = ray.get_runtime_context()
    resources = context.get_assigned_resources()
    # Threads come from the task's own CPU share, not from the node it landed on, so that a
    # job gives the same floats on every node (reduction order depends on the thread count).
    torch.set_num_threads(threads_for(resources.get("CPU", 1.0)))
    torch.set_grad_enabled(True)  # attacks need gradients (as in evaluate_run)
    # A task given (a share of) a GPU runs there; Ray sets CUDA_VISIBLE_DEVICES to its GPU.
    device = torch.device("cuda" if resources.get("GPU", 0) > 0 else "cpu")
    models = _models_on(models_box[0], device, job.precision)
    with warnings.catch_warnings():  # read-only view; run_job copies the shard it uses
        warnings.simplefilter("ignore", UserWarning)
        split_images, split_labels = torch.from_numpy(images), torch.from_numpy(labels)
    start = time.perf_counter()
    with memory_cap(memory_mb):
        rows = run_job(
            job, models, split_images, split_labels, device=device, drift_samples=drift_samples
        )
    # Simulated nodes share a hostname: the node id tells them apart.
    node = f"{socket.gethostname()}/{context.get_node_id()[:8]}"
    return rows, time.perf_counter() - start, node, f"pid-{os.getpid()}"


# --------------------------------------------------------------------------- the fan-out


@dataclass
class RaySweepStats:
    """What happened during one `run_sweep_on_ray` call."""

    submitted: int = 0  # task submissions, retries included
    finished: int = 0  # jobs that wrote a part file
    failed: int = 0  # jobs recorded as failures after their last attempt
    retried: int = 0  # resubmissions after a failed attempt
    max_in_flight_seen: int = 0  # the most tasks ever outstanding at once


def _cause(error: RayError) -> BaseException:
    """The user's exception inside a RayTaskError, so failures.csv names it, not Ray."""
    if isinstance(error, RayTaskError) and error.cause is not None:
        return error.cause
    return error


def run_sweep_on_ray(
    sweep: Sweep,
    *,
    max_in_flight: int = 8,
    max_retries: int = 1,
    num_cpus_per_task: float = 1,
    num_gpus_per_task: float = 0,
    resources_per_task: dict[str, float] | None = None,
    memory_mb_per_task: float | None = None,
    show_progress: bool = True,
    on_update: OnUpdate | None = None,
) -> RaySweepStats:
    """Run every pending job of `sweep` as a Ray task. Ray must be initialised.

    `memory_mb_per_task` is Ray's `memory` resource for scheduling and each job's allocation
    cap; a job that exceeds it is recorded at once (a rerun would need the same memory).

    Appends to `sweep.timings` and `sweep.failures` like `run_sweep_locally`; call
    `finish_sweep(sweep)` afterwards to merge the parts.
    """
    if max_in_flight < 1:
        raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
    if max_retries < 0:
        raise ValueError(f"max_retries must be 0 or more, got {max_retries}")
    if not ray.is_initialized():
        raise RuntimeError("Ray is not initialised: call init_local_ray() or connect() first")
    pending = sweep.pending
    if not pending:
        return RaySweepStats()
    # Retries are the driver's (below), not Ray's, so the driver knows each job's attempt count.
    task = evaluate_job.options(
        num_cpus=num_cpus_per_task,
        num_gpus=num_gpus_per_task,
        resources=resources_per_task or {},
        memory=None if memory_mb_per_task is None else memory_mb_per_task * 2**20,
        max_retries=0,
        retry_exceptions=False,
    )
    fan_out = _FanOut(sweep, task, memory_mb_per_task, max_retries)
    total = len(sweep.jobs)
    already = total - len(pending)
    bar = progress_bar(
        total=total, initial=already, desc="sweep", unit="job", disable=not show_progress
    )
    try:
        for done in fan_out.run(pending, max_in_flight, already):
            bar.update(1)
            bar.set_postfix_str(f"failed={len(sweep.failures)} in_flight={len(fan_out.in_flight)}")
            if on_update is not None:
                on_update(done, len(sweep.failures), total)
    finally:
        fan_out.cancel()  # interrupted (Ctrl-C, a callback raised): stop what is running
        bar.close()
    return fan_out.stats


class _FanOut:
    """One sweep's tasks on Ray: submissions within the bound, retries, parts as they land."""

    def __init__(self, sweep: Sweep, task: Any, memory_mb: float | None, max_retries: int) -> None:
        self.sweep = sweep
        self.task = task
        self.memory_mb = memory_mb
        self.max_retries = max_retries
        self.stats = RaySweepStats()
        self.in_flight: dict[ray.ObjectRef, tuple[Job, int]] = {}  # ref -> (job, attempt)
        # Put once: every task gets these refs, so the models are serialised once per sweep.
        self.models_box = [ray.put(sweep.models)]
        self.images_ref = ray.put(sweep.images.numpy())
        self.labels_ref = ray.put(sweep.labels.numpy())

    def run(self, pending: list[Job], max_in_flight: int, done: int) -> Iterator[int]:
        """Submit and collect until every job finished or failed; yields the count of jobs
        done after each finished or failed job."""
        # Attacks first: they are the longest jobs, and a long job started last leaves the
        # other evaluators idle at the end (longest-first scheduling). No result changes.
        ordered = sorted(pending, key=lambda job: job.family is not Family.ADVERSARIAL)
        queue = list(reversed(ordered))  # pop() from the end
        while queue or self.in_flight:
            while queue and len(self.in_flight) < max_in_flight:  # backpressure
                self.submit(queue.pop(), 1)
            outcome = self.collect()
            if outcome is None:  # resubmitted: not finished yet
                continue
            done += outcome
            yield done

    def submit(self, job: Job, attempt: int) -> None:
        ref = self.task.remote(
            job,
            self.models_box,
            self.images_ref,
            self.labels_ref,
            self.memory_mb,
            self.sweep.config.robustness.drift_samples,
        )
        self.in_flight[ref] = (job, attempt)
        self.stats.submitted += 1
        self.stats.max_in_flight_seen = max(self.stats.max_in_flight_seen, len(self.in_flight))

    def collect(self) -> int | None:
        """Wait for one task: 1 when its job finished, 0 when it failed for good, None when
        it was resubmitted."""
        ready, _ = ray.wait(list(self.in_flight), num_returns=1)
        job, attempt = self.in_flight.pop(ready[0])
        try:
            rows, wall, node, worker = ray.get(ready[0])
        except RayError as error:  # the job raised or its worker died
            cause = _cause(error)
            if attempt <= self.max_retries and not isinstance(cause, JobMemoryError):
                self.stats.retried += 1
                self.submit(job, attempt + 1)
                return None
            self.sweep.failures.append(failure_record(job, cause, attempts=attempt))
            self.stats.failed += 1
            return 0
        write_part(self.sweep.run_dir, rows)  # the driver owns the run directory
        self.sweep.timings.append(
            {
                "job_id": job.job_id,
                "node": node,
                "worker": worker,
                "attempts": attempt,
                "wall_s": round(wall, 3),
            }
        )
        self.stats.finished += 1
        return 1

    def cancel(self) -> None:
        for ref in self.in_flight:
            ray.cancel(ref, force=True)
