"""The tasks of a sweep and the worker that runs them.

A task is one weight group rolled out from a share of the contexts. The list of tasks is a function of the
model and the contexts only (`plan_tasks`), never of the backend or the number of workers: every backend
runs the same rollouts with the same batches, and the reference is rolled out in the same shares, so a
sweep gives the same numbers to the last bit in one process, in a process pool or on a Ray cluster.

A worker opens the model once (`Job.open`: the skeleton graph plus the weight arrays it is handed, e.g.
mapped from shared memory) and keeps one session for all its tasks.
"""

from __future__ import annotations

import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.metrics import divergence
from ..core.model import Model
from ..core.rollout import Rollout, RolloutResult, RolloutSpec
from .probes import PROBES, probe_delta
from .scores import GroupScore, ProbeSettings

# contexts are shared out between tasks only when a sweep has fewer groups than this (a cluster then still
# gets work for each of its cores), the model is large enough that a call's compute outweighs its overhead, and
# every share keeps at least SPLIT_MIN_CONTEXTS contexts. The rule depends on the model and the contexts only:
# every backend runs the same batches, so the scores are the same to the last bit wherever they run. The price
# is paid by a serial sweep of such a model: it makes one call per share instead of one for all contexts.
SPLIT_BELOW_GROUPS = 16
SPLIT_MIN_PARAMS = 1_000_000
SPLIT_MIN_CONTEXTS = 2
# every session of a sweep runs its kernels on one thread, in every backend: onnxruntime's kernels can round
# differently with another intra-op thread count (seen on 1024-wide Gemm with weights fed as inputs), and a sweep
# must give the same bits wherever it runs. Parallelism comes from running tasks side by side (processes, Ray).
SWEEP_THREADS = 1
_CHUNK = 1 << 20  # elements per slice when summing a group's perturbation: no float64 copy of a whole tensor

Groups = Sequence[tuple[str, tuple[str, ...]]]


@dataclass(frozen=True)
class Task:
    """Group ``group`` (its index in the sweep's groups) rolled out from contexts ``start:stop``."""

    index: int
    group: int
    start: int
    stop: int


@dataclass(frozen=True)
class TaskResult:
    """What a task measured: the divergence e_t(c) [T, stop - start] (None when the rollout went non-finite)."""

    index: int
    eps: float
    n_params: int
    probe: str
    first_nonfinite: int | None
    e: np.ndarray | None
    calls: int
    seconds: float = 0.0  # wall time of the task in its worker (benchmarks, projections); not part of the scores
    weight_rms: float = 1.0  # RMS of the group's unperturbed weights: gamma's relative initial separation


def context_shares(n_groups: int, k: int, n_params: int, fixed_batch: int | None) -> list[tuple[int, int]]:
    """How the K contexts are shared out between the tasks of each group (see `SPLIT_BELOW_GROUPS`)."""
    parts = min(k // SPLIT_MIN_CONTEXTS, math.ceil(SPLIT_BELOW_GROUPS / max(n_groups, 1)))
    if n_groups >= SPLIT_BELOW_GROUPS or n_params < SPLIT_MIN_PARAMS or parts < 2:
        return [(0, k)]
    size = math.ceil(k / parts)
    if fixed_batch:  # whole batches of a fixed-batch model: no padded calls
        size = math.ceil(size / fixed_batch) * fixed_batch
    return [(s, min(s + size, k)) for s in range(0, k, size)]


def plan_tasks(n_groups: int, shares: Sequence[tuple[int, int]]) -> list[Task]:
    """Every (group, share) in order: group-major, so a group's results complete early."""
    out: list[Task] = []
    for g in range(n_groups):
        for a, b in shares:
            out.append(Task(len(out), g, a, b))
    return out


def run_shares(roll: Rollout, arrays: Sequence[np.ndarray], horizon: int, shares: Sequence[tuple[int, int]]) -> RolloutResult:
    """One rollout per share of the contexts, joined along the context axis (the reference of a sweep)."""
    parts = [roll.run([a[s:e] for a in arrays], horizon, rows=slice(s, e)) for s, e in shares]
    steps = [np.concatenate([p.steps[j] for p in parts], axis=1) for j in range(len(parts[0].steps))]
    bad = [p.first_nonfinite for p in parts if p.first_nonfinite is not None]
    return RolloutResult(steps, sum(p.forward_calls for p in parts), min(bad) if bad else None)


@dataclass(frozen=True)
class Job:
    """Everything a worker needs besides the weights (which travel once per machine: shared memory, object store).

    Picklable; the model itself is its skeleton (`Model.skeleton`, no weight data)."""

    skeleton: bytes
    path: str | None
    sha256: str
    spec: RolloutSpec
    groups: tuple[tuple[str, tuple[str, ...]], ...]
    contexts: tuple[np.ndarray, ...]
    statics: dict[str, np.ndarray]
    forcings: dict[str, np.ndarray]  # the forcing inputs' values [K, horizon, ...] (`edgetqs.core.forcings`)
    reference: tuple[np.ndarray, ...]
    inv: tuple[np.ndarray, ...]
    horizon: int
    settings: ProbeSettings
    strategy: str

    def open(self, weights: Mapping[str, np.ndarray]) -> TaskScorer:
        """The model rebuilt around ``weights`` and a scorer holding one session for every task."""
        import onnx

        model = Model(onnx.load_from_string(self.skeleton), Path(self.path) if self.path else None, arrays=weights, sha256=self.sha256)
        return TaskScorer(self, model)


class TaskScorer:
    """Runs tasks on one model and one session (``feed``), or a rebuilt session per task (``rebuild``).

    Args:
        job: the sweep.
        model: the model (the coordinator's own, or one rebuilt in a worker).
        roll: a warm feed rollout to reuse (the coordinator's reference session).
    """

    def __init__(self, job: Job, model: Model, roll: Rollout | None = None) -> None:
        self.job = job
        self.model = model
        self.roll = roll
        if job.strategy == "feed" and roll is None:
            self.roll = Rollout(model, job.spec, job.statics, threads=SWEEP_THREADS, forcings=job.forcings)

    def _perturbation(self, tensors: tuple[str, ...]) -> tuple[dict[str, np.ndarray], float, int, str, float]:
        """The group's perturbed weights, eps = RMS of the perturbation, its size, the probe used and the RMS of the
        group's weights."""
        settings = self.job.settings
        new = probe_delta(self.model, tensors, settings)
        ss, n, nonzero = self._sum_sq(new, tensors)
        probe = PROBES.get(settings.probe)
        if not nonzero and probe.may_be_exact:
            # round-to-nearest represents this group exactly (a one-element bias, say): quantizing it
            # costs nothing at these bits, but the planner still needs its gain: measure with the fallback
            settings = settings.model_copy(update={"probe": probe.fallback})
            new = probe_delta(self.model, tensors, settings)
            ss, n, nonzero = self._sum_sq(new, tensors)
        return new, (math.sqrt(ss / n) if n else 0.0), n, settings.probe, self._weight_rms(tensors)

    def _weight_rms(self, tensors: tuple[str, ...]) -> float:
        total, n = 0.0, 0
        for t in tensors:
            w = self.model.weight_array(t).reshape(-1)
            for s in range(0, w.size, _CHUNK):
                total += float(np.square(w[s : s + _CHUNK].astype(np.float64)).sum())
            n += w.size
        return math.sqrt(total / n) if n else 0.0

    def _sum_sq(self, new: dict[str, np.ndarray], tensors: tuple[str, ...]) -> tuple[float, int, bool]:
        total, n, nonzero = 0.0, 0, False
        for t in tensors:
            a, b = new[t].reshape(-1), self.model.weight_array(t).reshape(-1)
            for s in range(0, a.size, _CHUNK):
                d = a[s : s + _CHUNK].astype(np.float64) - b[s : s + _CHUNK]
                total += float(np.square(d).sum())  # numpy's pairwise sum: the same bits in every process
                nonzero = nonzero or bool(d.any())
            n += a.size
        return total, n, nonzero

    def run(self, task: Task) -> TaskResult:
        """Perturb the task's group, roll its share of the contexts out and measure the divergence."""
        from ..core.session import SharedSession

        job = self.job
        t0 = time.perf_counter()
        new, eps, n, probe, w_rms = self._perturbation(job.groups[task.group][1])
        ctx = [c[task.start : task.stop] for c in job.contexts]
        if job.strategy == "feed":
            assert self.roll is not None
            res = self.roll.run(ctx, job.horizon, overrides=new, rows=slice(task.start, task.stop))
        else:
            session = SharedSession(self.model, feed=False, threads=SWEEP_THREADS, replace=new)
            res = Rollout(self.model, job.spec, job.statics, session=session, forcings=job.forcings).run(
                ctx, job.horizon, rows=slice(task.start, task.stop)
            )
        del new
        e = None
        if res.first_nonfinite is None:
            e = divergence(res.steps, [r[:, task.start : task.stop] for r in job.reference], job.inv)
        return TaskResult(task.index, eps, n, probe, res.first_nonfinite, e, res.forward_calls, time.perf_counter() - t0, w_rms)


def group_score(name: str, tensors: tuple[str, ...], parts: Sequence[TaskResult], horizon: int, relative: bool = True) -> GroupScore:
    """A group's score from its tasks (in context order); ``relative``: gamma's initial separation is eps / rms(W)."""
    from .sweep import summarise

    first = parts[0]
    bad = [p.first_nonfinite for p in parts if p.first_nonfinite is not None]
    if bad:
        return GroupScore(
            name=name,
            tensors=tensors,
            n_params=first.n_params,
            gamma=None,
            gamma_curve=tuple([None] * horizon),
            gain=None,
            eps=first.eps,
            dead=False,
            diverged_step=min(bad),
            probe=first.probe,
            weight_rms=first.weight_rms,
        )
    e = np.concatenate([p.e for p in parts if p.e is not None], axis=1)
    return summarise(name, tensors, first.n_params, e, first.eps, first.probe, first.weight_rms, relative)


def weights_of(model: Model) -> dict[str, np.ndarray]:
    """The model's weight arrays by name (what a backend ships to its workers once)."""
    return {w.name: model.weight_array(w.name) for w in model.weights}
