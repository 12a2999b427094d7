"""How long a sweep (and a build's re-scoring search) will take, measured before it starts.

A sweep runs about one rollout per weight group plus a few for its baseline (the float reference, the
state exponent, the strategy probe); each rollout is T steps of ceil(K / B) model calls (B: the model's
fixed batch, else all K contexts in one call). One timed rollout of the contexts, on the session the
sweep uses (weights fed as inputs), prices a call; the projection is that price times the calls. An
automatic horizon is worked out the sweep's way on one call's worth of contexts (`project_sweep`).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.contexts import Contexts
from ..core.model import Model
from ..core.rollout import Rollout, RolloutSpec
from .groups import make_groups
from .scores import ProbeSettings

BASELINE_ROLLOUTS = 3  # reference, state exponent, strategy probe
ADVISE_ABOVE_S = 180.0  # a projection above this many seconds comes with advice on how to cut it
TIMED_STEPS = 4  # steps of the timed rollout (after one warm-up call)


@dataclass(frozen=True)
class Projection:
    """A sweep's projected cost: ``groups`` x ``horizon`` x ``calls_per_step`` model calls of ``call_seconds``."""

    groups: int
    block_groups: int  # the groups at block granularity (what ``--groups block`` would score)
    horizon: int
    horizon_is_bound: bool  # an automatic horizon that could not be worked out: ``horizon`` is its upper bound
    horizon_auto: bool  # an automatic horizon, worked out on a few contexts (the sweep may choose another)
    k: int
    batch: int | None  # the model's fixed batch (None: all contexts a call)
    call_seconds: float  # one model call with the weights fed as inputs (the sweep's feed strategy)
    build_seconds: float = math.inf  # building a session (the rebuild strategy builds one per group)
    rebuild_call_seconds: float = math.inf  # one call on such a session
    refine_rollouts: int = 0
    refine_contexts: int = 0  # contexts of the re-scoring search (at most)
    workers: int = 1  # processes the sweep's groups are shared out to (each session single-threaded)

    @property
    def calls_per_step(self) -> int:
        return math.ceil(self.k / self.batch) if self.batch else 1

    @property
    def rollout_seconds(self) -> float:
        """One group's rollout: the cheaper of the sweep's strategies (feed, or rebuild with its session build)."""
        calls = self.horizon * self.calls_per_step
        return min(calls * self.call_seconds, self.build_seconds + calls * self.rebuild_call_seconds)

    @property
    def sweep_seconds(self) -> float:
        return (BASELINE_ROLLOUTS + math.ceil(self.groups / max(1, self.workers))) * self.rollout_seconds

    @property
    def refine_seconds(self) -> float:
        """The search's rollouts (weights fed) over its own contexts: B a call, or all of them in one call
        (priced per context from the timed call)."""
        n = self.refine_contexts or self.k
        per_step = math.ceil(n / self.batch) * self.call_seconds if self.batch else n / self.k * self.call_seconds
        return self.refine_rollouts * self.horizon * per_step

    @property
    def seconds(self) -> float:
        return self.sweep_seconds + self.refine_seconds

    def describe(self) -> str:
        """One line: the projection and the numbers it comes from."""
        t = f"T{'<=' if self.horizon_is_bound else '~' if self.horizon_auto else '='}{self.horizon}"
        per = f"{self.calls_per_step} call{'s' if self.calls_per_step > 1 else ''}/step" + (f" at batch {self.batch}" if self.batch else "")
        line = (
            f"projected sweep: {self.groups} groups + {BASELINE_ROLLOUTS} baseline rollouts x {t} x {per} x {self.call_seconds * 1e3:.3g} ms"
            + (f" / {self.workers} workers" if self.workers > 1 else "")
            + f" = {fmt_seconds(self.sweep_seconds)}"
        )
        if self.refine_rollouts:
            line += f"; re-scoring search up to {self.refine_rollouts} rollouts = {fmt_seconds(self.refine_seconds)}"
        return line

    def advice(self) -> list[str]:
        """Ways to cut a projection above `ADVISE_ABOVE_S`, each with what it would take (empty below it)."""
        if self.seconds <= ADVISE_ABOVE_S:
            return []
        out = []
        if self.block_groups < self.groups:
            sweep = (BASELINE_ROLLOUTS + math.ceil(self.block_groups / max(1, self.workers))) * self.rollout_seconds
            out.append(f"--groups block scores {self.block_groups} module groups instead of {self.groups}: sweep ~{fmt_seconds(sweep)}")
        if self.k >= 2 * (self.batch or 2):
            k2 = self.k // 2
            # a fixed batch runs ceil(k/B) calls a step; a free one runs all k in one call that costs about k contexts
            share = math.ceil(k2 / self.batch) / self.calls_per_step if self.batch else k2 / self.k
            out.append(f"-k {k2} (contexts) instead of {self.k}: sweep ~{fmt_seconds(self.sweep_seconds * share)}")
        if self.refine_rollouts and self.refine_seconds > 0.3 * self.seconds:
            out.append(f"--no-refine skips the re-scoring search ({fmt_seconds(self.refine_seconds)})")
        return out


def fmt_seconds(s: float) -> str:
    """``42 s``, ``6.5 min``, ``1.2 h``."""
    if s < 90:
        return f"{s:.0f} s" if s >= 10 else f"{s:.2g} s"
    if s < 5400:
        return f"{s / 60:.1f} min"
    return f"{s / 3600:.1f} h"


def project_sweep(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings,
    refine_rollouts: int = 0,
    refine_contexts: int = 0,
    workers: int = 1,
) -> Projection:
    """Time a short rollout of ``contexts`` (weights fed as inputs, as the sweep runs them) and project the sweep.

    With an automatic horizon, the sweep's own rule (`edgetqs.sensitivity.sweep.choose_horizon`: the step where
    an initial-state perturbation has grown 100-fold) is applied to one call's worth of contexts, so the
    projection uses about the horizon the sweep will choose (2 x ``max_horizon`` calls, a few % of a sweep).

    Args:
        refine_rollouts: the re-scoring search's rollout budget to add (0: none).
        refine_contexts: the contexts that search rolls out (at most; 0: the scoring contexts).
        workers: the sweep's parallel processes (groups are shared out; sessions are single-threaded).
    """
    from types import SimpleNamespace

    from .sweep import choose_horizon, inverse_spreads, state_exponent
    from .tasks import SWEEP_THREADS

    roll = Rollout(
        model, spec, contexts.statics, threads=SWEEP_THREADS, forcings=contexts.forcing_arrays
    )  # one thread each, as the sweep's
    roll.run([a[:1] for a in contexts.arrays], 1, rows=slice(0, 1))  # warm-up: the first call pays the session's lazy set-up
    feed = {w.name: np.array(model.weight_array(w.name)) for w in model.weights}  # as a perturbed group feeds them
    t = time.perf_counter()
    res = roll.run(contexts.arrays, TIMED_STEPS, overrides=feed)
    call = (time.perf_counter() - t) / max(1, res.forward_calls)
    t = time.perf_counter()
    fresh = Rollout(
        model, spec, contexts.statics, threads=SWEEP_THREADS, model_bytes=model.bytes, forcings=contexts.forcing_arrays
    )  # the rebuild strategy: a session per group
    built = time.perf_counter() - t
    t = time.perf_counter()
    res = fresh.run(contexts.arrays, TIMED_STEPS)
    rebuild_call = (time.perf_counter() - t) / max(1, res.forward_calls)
    horizon, bound = (settings.horizon, False) if settings.horizon is not None else (settings.max_horizon, True)
    if settings.horizon is None:
        n = roll.fixed_batch or min(contexts.k, 2)
        sub: Any = SimpleNamespace(arrays=[a[:n] for a in contexts.arrays], spreads=contexts.spreads)
        ref = roll.run(sub.arrays, settings.max_horizon, rows=slice(0, n))
        if ref.first_nonfinite is None:  # else the sweep stops with its own message
            inv = inverse_spreads(spec, sub, ref.steps)
            state, e = state_exponent(roll, sub, ref.steps, inv, settings.max_horizon, spec, settings.state_scale, settings.seed)
            horizon, _ = choose_horizon(e.mean(axis=1), state.eps, settings.max_horizon)
            bound = False
    return Projection(
        groups=len(make_groups(model, settings.granularity, settings.block_depth)),
        block_groups=len(make_groups(model, "block", settings.block_depth)),
        horizon=horizon,
        horizon_is_bound=bound,
        horizon_auto=settings.horizon is None,
        k=contexts.k,
        batch=roll.fixed_batch,
        call_seconds=call,
        build_seconds=built,
        rebuild_call_seconds=rebuild_call,
        refine_rollouts=refine_rollouts,
        refine_contexts=refine_contexts,
        workers=workers,
    )


__all__ = ["ADVISE_ABOVE_S", "Projection", "fmt_seconds", "project_sweep"]
