"""Where a sweep's tasks run. Each backend takes the same tasks and hands each result back as it finishes;
the sweep (`edgetqs.sensitivity.sweep`) never asks which backend it has.

- ``serial``: in this process, on the session of the reference rollout (the default with one worker).
- ``processes``: a pool of worker processes on this machine (the default with several workers). The weights
  are written once to a shared file that every worker maps read-only: one copy per machine, not per worker.
- ``ray``: actors on a Ray cluster (``pip install 'edgetqs[ray]'``): a local one started for the sweep, or the
  one at ``address``. The weights go into Ray's object store once; the actors on a machine map the same copy.
  A worker that dies has its tasks run again by a fresh worker, anywhere in the cluster.

Every worker opens the model once and keeps its session for all its tasks. Add a backend with
``BACKENDS.register(name, factory)``; a factory takes (workers, address) and returns a `SweepBackend`.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from ..core.files import pause_point
from ..core.model import Model
from ..core.rollout import Rollout
from ..errors import BadInputError, EdgetqsError, OptionalDependencyError, SweepWorkerError
from ..registry import Registry
from .tasks import Job, Task, TaskResult, TaskScorer, weights_of

MAX_ATTEMPTS = 3  # runs of one task before a sweep gives up on workers that keep dying
LOCAL_PROCESSES_MIN_PARAMS = 5_000_000  # with no backend named, larger models are swept by a process per core
Done = Callable[[TaskResult], None]


@dataclass
class Sweep:
    """What a backend is given: the job its workers open, and this process's model and warm reference session."""

    job: Job
    model: Model
    roll: Rollout | None


class SweepBackend(Protocol):
    """Runs tasks and calls ``done`` with each result as it finishes, in any order, in the calling thread.

    Used as a context manager around one or more `run` calls (a ladder sweep runs several), so that a
    cluster is joined once. `run` returns how many task runs were lost with a worker and run again."""

    name: str
    workers: int

    def __enter__(self) -> SweepBackend: ...

    def __exit__(self, *exc: object) -> None: ...

    def run(self, sweep: Sweep, tasks: Sequence[Task], done: Done) -> int: ...


class SerialBackend:
    """Every task in this process, one after the other (on one core: see `edgetqs.sensitivity.tasks.SWEEP_THREADS`)."""

    name = "serial"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        if workers not in (None, 1):
            raise BadInputError(f"workers {workers} with the serial backend, which runs in this process; use --backend processes or ray")
        self.workers = 1

    def __enter__(self) -> SerialBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, sweep: Sweep, tasks: Sequence[Task], done: Done) -> int:
        scorer = TaskScorer(sweep.job, sweep.model, roll=sweep.roll)
        for t in tasks:
            done(scorer.run(t))
        return 0


# --- processes -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharedWeights:
    """Every weight in one file that worker processes map read-only: (name, dtype, shape, byte offset)."""

    path: str
    index: tuple[tuple[str, str, tuple[int, ...], int], ...]

    def arrays(self) -> dict[str, np.ndarray]:
        return {n: np.memmap(self.path, dtype=np.dtype(dt), mode="r", offset=off, shape=shape) for n, dt, shape, off in self.index}


@contextlib.contextmanager
def shared_weights(model: Model) -> Iterator[SharedWeights]:
    """Write the weights to a file in memory (``/dev/shm``) when it has room, else in the temporary folder."""
    arrays = weights_of(model)
    total = sum(a.nbytes + 64 for a in arrays.values())
    shm = Path("/dev/shm")
    base = str(shm) if shm.is_dir() and os.access(shm, os.W_OK) and shutil.disk_usage(shm).free > 2 * total else None
    folder = tempfile.mkdtemp(prefix="edgetqs-weights-", dir=base)
    path = os.path.join(folder, "weights.bin")
    index = []
    try:
        with open(path, "wb") as f:
            for name, a in arrays.items():
                off = -f.tell() % 64  # aligned for the kernels
                f.write(b"\0" * off)
                index.append((name, a.dtype.str, tuple(int(d) for d in a.shape), f.tell()))
                np.ascontiguousarray(a).tofile(f)
        yield SharedWeights(path, tuple(index))
    finally:
        shutil.rmtree(folder, ignore_errors=True)


_PROC: TaskScorer | None = None


def _proc_init(job: Job, weights: SharedWeights) -> None:
    global _PROC
    _PROC = job.open(weights.arrays())


def _proc_run(task: Task) -> TaskResult:
    if _PROC is None:
        raise RuntimeError("sweep worker process was not initialised")
    return _PROC.run(task)


class ProcessesBackend:
    """A pool of ``workers`` processes on this machine (default: one per core), each single-threaded."""

    name = "processes"

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.workers = workers or os.cpu_count() or 1

    def __enter__(self) -> ProcessesBackend:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def run(self, sweep: Sweep, tasks: Sequence[Task], done: Done) -> int:
        import multiprocessing as mp
        from concurrent.futures import ProcessPoolExecutor, as_completed
        from concurrent.futures.process import BrokenProcessPool

        pending = {t.index: t for t in tasks}
        attempts: Counter[int] = Counter()
        retried = 0
        with shared_weights(sweep.model) as shared:
            while pending:
                n = max(1, min(self.workers, len(pending)))
                with _sigint_ignored():  # workers start during submit and inherit this: Ctrl-C is the parent's, which ends them
                    pool = ProcessPoolExecutor(n, mp_context=mp.get_context("spawn"), initializer=_proc_init, initargs=(sweep.job, shared))
                    running = {pool.submit(_proc_run, t): t for t in pending.values()}
                pause_point("sweep_workers_started")  # test hook: Ctrl-C from here on stops the sweep
                try:
                    for f in as_completed(running):
                        r = f.result()
                        pending.pop(r.index, None)
                        done(r)
                except BrokenProcessPool as exc:
                    # a worker died (killed, out of memory, or it could not start): every unfinished task runs again
                    for i in pending:
                        attempts[i] += 1
                    retried += len(pending)
                    if max(attempts.values()) >= MAX_ATTEMPTS:
                        raise SweepWorkerError(
                            f"the sweep's worker processes died {MAX_ATTEMPTS} times ({exc}); check the memory per worker "
                            "(fewer --workers), or run with --backend serial; a Python script that starts a parallel sweep "
                            'must do it under `if __name__ == "__main__":` (each worker imports the script again)'
                        ) from None
                finally:
                    _stop(pool)
        return retried


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while worker processes start: an ignored signal stays ignored in a spawned interpreter, so a
    terminal's Ctrl-C (sent to the whole process group) reaches only the parent, which stops the workers at once,
    and no worker prints a traceback of its own. (Blocking it instead would keep a Ctrl-C pressed in this window,
    but the pool's processes do not inherit a blocked mask; one pressed while workers start is ignored.)"""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return
    prev = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, prev if prev is not None else signal.SIG_DFL)


def _stop(pool: Any) -> None:
    """Shut a pool down without waiting for running tasks (Ctrl-C must not wait for a long rollout)."""
    pool.shutdown(wait=False, cancel_futures=True)
    for p in list((getattr(pool, "_processes", None) or {}).values()):
        with contextlib.suppress(Exception):
            p.terminate()


# --- ray -------------------------------------------------------------------------------------------------


def import_ray() -> Any:
    """The ray module, or the error that names the extra to install."""
    try:
        import ray
    except ImportError:
        raise OptionalDependencyError("ray", "ray", "the ray sweep backend") from None
    return ray


class RayWorker:
    """A Ray actor: opens the model once from the object store (zero-copy on its machine) and runs tasks."""

    def __init__(self, job: Job, weights: dict[str, np.ndarray]) -> None:
        self.scorer = job.open(weights)

    def pid(self) -> int:
        return os.getpid()

    def run(self, task: Task) -> TaskResult:
        return self.scorer.run(task)


class RayBackend:
    """Actors on a Ray cluster: ``address`` (``ray://host:10001``, ``host:6379``, ``auto``), else the cluster
    this process is already connected to, else the one ``RAY_ADDRESS`` names, else a local one started for the
    sweep (and stopped after it).

    Args:
        workers: actors to run (default: one per CPU of the cluster; never more than it has).
        address: the cluster to join.
    """

    name = "ray"
    PIPELINE = 2  # tasks queued per actor: the next one is ready when a result comes back

    def __init__(self, workers: int | None = None, address: str | None = None) -> None:
        self.requested = workers
        self.address = address
        self.workers = workers or 0
        self._ray: Any = None
        self._started = False
        self.pids: list[int] = []  # worker processes alive now (tests kill one)

    def __enter__(self) -> RayBackend:
        ray = import_ray()
        self._ray = ray
        if not ray.is_initialized():
            import logging

            kw: dict[str, Any] = {"logging_level": logging.WARNING, "log_to_driver": False}
            if self.address:
                import edgetqs

                # the cluster runs this process's edgetqs (the code must match the driver's); its other
                # dependencies (numpy, onnx, onnxruntime) must be installed on the nodes
                kw["runtime_env"] = {"py_modules": [os.path.dirname(edgetqs.__file__)]}
                try:
                    ray.init(address=self.address, **kw)
                except (ConnectionError, RuntimeError, ValueError) as exc:
                    raise BadInputError(
                        f"cannot join the Ray cluster at '{self.address}' ({str(exc).strip().splitlines()[0][:200]}); start one there with "
                        "`ray start --head`, or give its address as host:port (ray:// for Ray Client), or drop --address for a local one"
                    ) from None
            elif os.environ.get("RAY_ADDRESS"):
                ray.init(**kw)  # the cluster RAY_ADDRESS names
            else:
                ray.init(address="local", include_dashboard=False, **kw)  # a new one, even if another runs here
            self._started = True
        return self

    def __exit__(self, *exc: object) -> None:
        if self._started and self._ray is not None:
            self._ray.shutdown()
        self._started = False

    def run(self, sweep: Sweep, tasks: Sequence[Task], done: Done) -> int:
        ray = self._ray
        if ray is None:
            raise RuntimeError("RayBackend.run outside its 'with' block")
        cpus = int(ray.cluster_resources().get("CPU", 1))
        n = max(1, min(self.requested or cpus, cpus, len(tasks)))
        self.workers = n
        job_ref, weights_ref = ray.put(sweep.job), ray.put(weights_of(sweep.model))
        actor_cls = ray.remote(num_cpus=1, max_restarts=0)(RayWorker)
        actors: dict[int, Any] = {}
        load: Counter[int] = Counter()
        inflight: dict[Any, tuple[int, Task]] = {}
        queue = deque(tasks)
        attempts: Counter[int] = Counter()
        retried = 0
        serial = iter(range(1 << 30))

        def spawn() -> int:
            aid = next(serial)
            actors[aid] = actor_cls.remote(job_ref, weights_ref)
            return aid

        def feed() -> None:
            for aid in list(actors):
                while queue and load[aid] < self.PIPELINE:
                    t = queue.popleft()
                    inflight[actors[aid].run.remote(t)] = (aid, t)
                    load[aid] += 1

        try:
            for _ in range(n):
                spawn()
            self.pids = [p for p in ray.get([a.pid.remote() for a in actors.values()])]
            feed()
            while inflight:
                ready, _ = ray.wait(list(inflight), num_returns=1)
                ref = ready[0]
                aid, task = inflight.pop(ref)
                load[aid] -= 1
                try:
                    result = ray.get(ref)
                except ray.exceptions.RayActorError as exc:
                    # the worker is gone (killed, out of memory, its machine lost): run the task again elsewhere
                    attempts[task.index] += 1
                    retried += 1
                    if attempts[task.index] >= MAX_ATTEMPTS:
                        raise SweepWorkerError(
                            f"task {task.index} (group '{sweep.job.groups[task.group][0]}') lost its Ray worker {MAX_ATTEMPTS} times; "
                            f"last: {str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__}"
                        ) from None
                    queue.appendleft(task)
                    if aid in actors:
                        with contextlib.suppress(Exception):
                            ray.kill(actors.pop(aid))
                        spawn()
                    feed()
                    continue
                except ray.exceptions.RayTaskError as exc:
                    cause = getattr(exc, "cause", None)
                    if isinstance(cause, EdgetqsError):
                        raise cause from None
                    raise
                done(result)
                feed()
        finally:
            for a in actors.values():
                with contextlib.suppress(Exception):
                    ray.kill(a)
        return retried


BACKENDS: Registry[Callable[[int | None, str | None], SweepBackend]] = Registry("sweep backend")
BACKENDS.register("serial", SerialBackend)
BACKENDS.register("processes", ProcessesBackend)
BACKENDS.register("ray", RayBackend)


def local_default(n_params: int) -> tuple[str, int | None]:
    """The backend when none is named and no worker count is given: a process per core for a model large enough
    that a call's compute outweighs starting the processes (every backend gives the same scores), else serial."""
    cores = os.cpu_count() or 1
    return ("processes", cores) if cores > 1 and n_params >= LOCAL_PROCESSES_MIN_PARAMS else ("serial", None)


def make_backend(name: str | None, workers: int | None = None, address: str | None = None) -> SweepBackend:
    """The backend ``name`` (default: serial with one worker, processes with more).

    Raises:
        BadInputError: an unknown name, workers out of range, or an address for a backend that joins no cluster.
    """
    name = check_backend(name, workers, address)
    return BACKENDS.get(name)(workers or None, address)  # workers 0: as many as there are cores


def check_backend(name: str | None, workers: int | None = None, address: str | None = None) -> str:
    """The backend a sweep with these settings runs on, checked before any work (a cached result skips the sweep,
    so the settings are checked on their own).

    Raises:
        BadInputError: an unknown name, workers out of range, or an address for a backend that joins no cluster.
    """
    if workers is not None and not 0 <= workers <= 1024:
        raise BadInputError(f"workers {workers}; expected 1 to 1024 (0: every core)")
    name = name or ("serial" if (workers or 1) == 1 else "processes")
    BACKENDS.get(name)
    if address is not None and name != "ray":
        raise BadInputError(f"address '{address}' is for the ray backend; add --backend ray, or drop --address")
    return name
