"""TQS: the trajectory-based quantization sensitivity score.

For each weight group g: perturb only g by d_g, roll out from K contexts for T steps, and measure
the divergence e_t(c) from the reference rollout (RMS over the state, each variable divided by its
spread, `edgetqs.core.metrics`). Then

    gamma_g(t) = mean_c (1/t) ln(e_t(c) / eps_g),   eps_g = RMS(d_g)
    A_g        = mean_c e_T(c) / eps_g

gamma_g = gamma_g(T) is a finite-time Lyapunov exponent whose initial separation is the weight
perturbation; A_g is the output error one unit of weight error buys at T. The model's own exponent
(perturb the initial state instead) tells shared chaos from a group's excess sensitivity.
"""

from __future__ import annotations

import hashlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.contexts import Contexts
from ..core.metrics import divergence, inverse_spread
from ..core.model import Model
from ..core.results import edgetqs_version
from ..core.rollout import Rollout, RolloutSpec
from ..core.weights import excluded_tensors
from ..errors import BadInputError, DivergedRolloutError, Hint
from .backends import Sweep, SweepBackend, local_default, make_backend
from .checkpoint import Checkpoint
from .groups import group_label, make_groups
from .scores import DEAD_GAMMA, GroupScore, ProbeSettings, Scores, StateExponent
from .tasks import SWEEP_THREADS, Job, Task, TaskResult, context_shares, group_score, plan_tasks, run_shares

TINY = float(np.finfo(np.float32).tiny)
STRATEGIES = ("auto", "feed", "rebuild")
# above this, ``auto`` does not time a rebuilt session: a feed session shares the model's arrays, a rebuilt one holds
# its own optimised copy of every weight (2-3x the weights while it is built)
AUTO_REBUILD_MAX_BYTES = 1 << 30
Progress = Callable[[int, int], None]


def summarise(
    name: str,
    tensors: tuple[str, ...],
    n_params: int,
    e: np.ndarray,
    eps: float,
    probe: str,
    weight_rms: float = 1.0,
    relative: bool = False,
) -> GroupScore:
    """gamma curve, gamma and gain from the divergence [T, K] and the perturbation size.

    With ``relative``, gamma's initial separation is the perturbation relative to the weights' size,
    eps / rms(W): gamma = mean_c (1/T) ln(e_T / (eps / rms W)). The gain stays per unit of weight error
    (the planner multiplies it by residuals in weight units)."""
    t = np.arange(1, e.shape[0] + 1)[:, None]
    if not (e[-1] > 0).any():
        return GroupScore(
            name=name,
            tensors=tensors,
            n_params=n_params,
            gamma=None,
            gamma_curve=tuple([None] * e.shape[0]),
            gain=0.0,
            eps=eps,
            dead=True,
            diverged_step=None,
            probe=probe,
            weight_rms=weight_rms,
        )
    sep = eps / weight_rms if relative and weight_rms > 0 else eps
    logs = np.log(np.maximum(e, TINY) / sep) / t
    curve = logs.mean(axis=1)
    gamma = float(curve[-1])
    gain = float(np.mean(e[-1] / eps))
    dead = gamma < DEAD_GAMMA
    return GroupScore(
        name=name,
        tensors=tensors,
        n_params=n_params,
        gamma=None if dead else gamma,
        gamma_curve=tuple(float(c) for c in curve),
        gain=gain,
        eps=eps,
        dead=dead,
        diverged_step=None,
        probe=probe,
        weight_rms=weight_rms,
    )


def inverse_spreads(spec: RolloutSpec, contexts: Contexts, steps: list[np.ndarray]) -> list[np.ndarray]:
    """Per pair, 1 / each variable's spread (the contexts' data), broadcastable to its trajectory [T, K, ...]."""
    return [inverse_spread(sp, spec.mode, spec.channel_axis, st.ndim) for sp, st in zip(contexts.spreads, steps)]


def state_exponent(
    roll: Rollout,
    contexts: Contexts,
    reference: list[np.ndarray],
    inv: list[np.ndarray],
    horizon: int,
    spec: RolloutSpec,
    scale: float,
    seed: int,
    shares: Sequence[tuple[int, int]] | None = None,
) -> tuple[StateExponent, np.ndarray]:
    """Perturb the initial state by ``scale`` variable spreads; returns the exponent and e_t [T, K].

    ``shares``: roll the contexts out in these shares, as the reference was (see `edgetqs.sensitivity.tasks`)."""
    rng = np.random.default_rng([seed, 7])
    pert, sizes = [], []
    for c, i in zip(contexts.arrays, inv):
        spread = 1.0 / i[0]  # drop the T axis: broadcastable to [K, ...]
        if spec.mode == "window":
            spread = spread.reshape((1,) * (c.ndim - 1) + (-1,))
        d = rng.standard_normal(c.shape) * scale * spread
        pert.append((c + d).astype(c.dtype))
        sizes.append(((pert[-1] - c) / spread).reshape(c.shape[0], -1))
    e0 = np.sqrt(np.mean(np.square(np.concatenate(sizes, axis=1), dtype=np.float64), axis=1))  # [K]
    res = run_shares(roll, pert, horizon, shares or [(0, pert[0].shape[0])])
    e = divergence(res.steps, reference, inv)
    t = np.arange(1, horizon + 1)[:, None]
    with np.errstate(all="ignore"):
        logs = np.log(np.maximum(e, TINY) / e0[None, :]) / t
    curve = [float(v) if np.isfinite(v) else None for v in logs.mean(axis=1)]
    err = [float(v) if np.isfinite(v) else float("nan") for v in e.mean(axis=1)]
    return StateExponent(
        exponent=curve[-1], curve=tuple(curve), eps=float(e0.mean()), error_curve=tuple(0.0 if math.isnan(v) else v for v in err)
    ), e


def choose_horizon(error_curve: np.ndarray, e0: float, max_horizon: int, growth: float = 100.0, minimum: int = 4) -> tuple[int, str]:
    """``--horizon auto``: the first step where an initial-state perturbation has grown ``growth``-fold.

    Past that point the rollout forgets its initial state (errors are dominated by the model's own
    chaos); before it, weight errors still steer the trajectory. Models that never amplify that much
    use ``max_horizon``.
    """
    hit = np.nonzero(error_curve >= growth * e0)[0]
    if hit.size:
        t = max(minimum, int(hit[0]) + 1)
        return min(t, max_horizon), f"auto: step where an initial-state perturbation grew {growth:g}x (max {max_horizon})"
    return max_horizon, f"auto: initial-state perturbations never grew {growth:g}x within {max_horizon} steps; used the maximum"


@dataclass
class _Baseline:
    """What every group of a sweep is compared with: the reference rollout on the strategy's session.

    ``roll`` is that session when the groups run on it (``feed``); a rebuilt constant session (which holds its
    own optimised copy of the weights) is not kept while the groups run."""

    roll: Rollout | None
    ref_steps: list[np.ndarray]
    inv: list[np.ndarray]
    state: StateExponent
    horizon: int
    rule: str
    strategy: str
    calls: int
    notes: tuple[str, ...]


def _session(model: Model, spec: RolloutSpec, statics: dict[str, np.ndarray], feed: bool, forcings: Any = None) -> Rollout:
    """A rollout on the model's own arrays: weights overridable per run (feed), or a fully optimised constant graph;
    on the sweep's one thread, like every task's session."""
    from ..core.session import SharedSession

    return Rollout(model, spec, statics, session=SharedSession(model, feed=feed, threads=SWEEP_THREADS), forcings=forcings)


def _baseline(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings,
    strategy: str,
    notes: tuple[str, ...],
    shares: Sequence[tuple[int, int]],
) -> _Baseline:
    """The reference rollout, the model's own exponent, the horizon, and (``auto``) the cheaper strategy.

    The two whole-trajectory rollouts every sweep needs double as the timing of each strategy: the
    reference runs on a freshly built, fully optimised session (exactly a rebuild group's cost, build and
    warm-up included); the state-perturbation rollout runs on the feed session. Both roll the contexts out
    in the same shares as the tasks (``shares``), so a group with no effect diverges by exactly zero."""
    arrays, statics = contexts.arrays, contexts.statics
    probe_t = settings.horizon or settings.max_horizon  # the longest horizon that may be needed
    weight_bytes = sum(model.weight_array(w.name).nbytes for w in model.weights)
    if strategy == "auto" and weight_bytes > AUTO_REBUILD_MAX_BYTES:
        strategy = "feed"
        notes = notes + (
            f"strategy auto -> feed without timing a rebuilt session: the weights ({weight_bytes / 2**30:.1f} GiB) are above "
            f"{AUTO_REBUILD_MAX_BYTES / 2**30:g} GiB, where its own optimised copy of them would double the memory; "
            "--strategy rebuild times nothing and rebuilds anyway",
        )
    first = "feed" if strategy == "feed" else "rebuild"
    tb = time.perf_counter()
    roll = _session(model, spec, statics, feed=first == "feed", forcings=contexts.forcing_arrays)
    ref = run_shares(roll, arrays, probe_t, shares)
    t_first = time.perf_counter() - tb
    if ref.first_nonfinite is not None:
        t = max(ref.first_nonfinite - 1, 1)
        raise DivergedRolloutError(
            f"the float model's own rollout becomes non-finite at step {ref.first_nonfinite} of {probe_t}",
            hint=Hint(
                "score-horizon",
                ("--horizon", str(t)),
                say="use {args} or fewer, or check the contexts' units",
                project=(("score.horizon", t),),
            ),
        )
    inv = inverse_spreads(spec, contexts, ref.steps)
    state_roll = roll
    extra_calls = 0
    if strategy == "auto":
        state_roll = _session(model, spec, statics, feed=True, forcings=contexts.forcing_arrays)
        state_roll.run([a[:1] for a in arrays], 2, rows=slice(0, 1))  # warm-up: a feed group pays it once per sweep, not per group
    tf = time.perf_counter()
    state, e_state = state_exponent(state_roll, contexts, ref.steps, inv, probe_t, spec, settings.state_scale, settings.seed, shares)
    if strategy == "auto":
        t_feed = time.perf_counter() - tf
        strategy = "rebuild" if t_first < 0.9 * t_feed else "feed"
        notes = notes + (
            f"strategy auto -> {strategy}: one rollout took {t_first:.4f} s on a rebuilt session "
            f"(build included), {t_feed:.4f} s with weights fed as inputs",
        )
        if strategy == "feed":
            # the reference must come from the same kind of session as the perturbed rollouts: a weight
            # with no effect then gives exactly zero divergence, not kernel round-off
            extra_calls = roll.forward_calls
            roll = state_roll
            ref = run_shares(roll, arrays, probe_t, shares)
        else:
            extra_calls = state_roll.forward_calls
    if settings.horizon is None:
        horizon, rule = choose_horizon(e_state.mean(axis=1), state.eps, settings.max_horizon)
        state = StateExponent(
            exponent=state.curve[horizon - 1], curve=state.curve[:horizon], eps=state.eps, error_curve=state.error_curve[:horizon]
        )
    else:
        horizon, rule = settings.horizon, "fixed"
    calls = extra_calls + roll.forward_calls
    return _Baseline(
        roll if strategy == "feed" else None, [s[:horizon] for s in ref.steps], inv, state, horizon, rule, strategy, calls, notes
    )


def run_sweep(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings | None = None,
    workers: int | None = None,
    progress: Progress | None = None,
    notes: tuple[str, ...] = (),
    strategy: str = "auto",
    *,
    backend: str | SweepBackend | None = None,
    address: str | None = None,
    checkpoint: Path | str | None = None,
    log: Callable[[str], None] | None = None,
) -> Scores:
    """Score every weight group of ``model`` with TQS.

    Args:
        model: the loaded model.
        spec: its rollout.
        contexts: K initial states (`edgetqs.core.contexts`).
        settings: probe, granularity, horizon, seed.
        workers: parallel workers (processes or Ray actors); every session of a sweep is single-threaded, so
            that the scores are the same on every backend. Default 1 (serial); with a parallel backend, every core
            of the machine or the Ray cluster. 0 with no backend named: a process per core for a model of 5 M
            parameters or more, else serial (the command line's default; a script that asks for it must start
            its work under ``if __name__ == "__main__":``, as worker processes import the script again).
        progress: called with (tasks done, tasks total) as each task finishes; a task is one group rolled out
            from a share of the contexts (all of them unless the sweep has few groups, see `edgetqs.sensitivity.tasks`).
        strategy: ``feed`` (one session, weights as inputs), ``rebuild`` (a session per group) or
            ``auto`` (the cheaper, timed on the reference and state rollouts; recorded in the result).
        backend: a registered backend's name (`edgetqs.sensitivity.backends`: serial, processes, ray) or an
            instance; default: see ``workers``. Every backend gives the same numbers.
        address: the Ray cluster to join (``ray`` backend).
        checkpoint: a file that keeps finished tasks while the sweep runs, so that a killed sweep resumes where it
            stopped (`edgetqs.sensitivity.checkpoint`); removed when the sweep completes.
        log: receives one-line notices (a resumed sweep).

    Returns:
        The `Scores`.

    Raises:
        BadInputError: bad settings, workers, strategy or backend.
        OptionalDependencyError: the ray backend without Ray installed.
        DivergedRolloutError: the float reference rollout itself becomes non-finite.
        SweepWorkerError: the workers of a parallel backend kept dying.
    """
    settings = settings or ProbeSettings()
    settings.check()
    if strategy not in STRATEGIES:
        raise BadInputError(f"strategy '{strategy}'; expected one of {', '.join(STRATEGIES)}")
    if backend is None and address is None and workers == 0:
        backend, workers = local_default(model.n_params)
    be = backend if backend is not None and not isinstance(backend, str) else make_backend(backend, workers, address)
    ckpt = Path(checkpoint) if checkpoint is not None else None
    with be:
        if settings.ladder:
            return _with_ladder(model, spec, contexts, settings, be, progress, notes, strategy, ckpt, log)
        return _sweep(model, spec, contexts, settings, be, progress, notes, strategy, ckpt, log)


def _digest(arrays: Sequence[np.ndarray]) -> str:
    h = hashlib.sha256()
    for a in arrays:
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def _sweep(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings,
    backend: SweepBackend,
    progress: Progress | None,
    notes: tuple[str, ...],
    strategy: str,
    checkpoint: Path | None,
    log: Callable[[str], None] | None,
) -> Scores:
    import onnxruntime

    t0 = time.perf_counter()
    groups = make_groups(model, settings.granularity, settings.block_depth)
    first = next(i for i in model.inputs if i.name == spec.pairs[0][0])
    k = contexts.arrays[0].shape[0]
    shares = context_shares(len(groups), k, model.n_params, first.shape[0] if first.shape else None)
    tasks = plan_tasks(len(groups), shares)
    if checkpoint is not None and strategy == "auto":
        # a resumed sweep keeps the strategy it started with (auto's timing may choose otherwise this time)
        strategy = Checkpoint.strategy_of(checkpoint) or strategy
    base = _baseline(model, spec, contexts, settings, strategy, notes, shares)
    job = Job(
        skeleton=bytes(model.skeleton.SerializeToString()),
        path=str(model.path) if model.path else None,
        sha256=model.sha256,
        spec=spec,
        groups=tuple(groups),
        contexts=tuple(contexts.arrays),
        statics=dict(contexts.statics),
        forcings=contexts.forcing_arrays(base.horizon),
        reference=tuple(base.ref_steps),
        inv=tuple(base.inv),
        horizon=base.horizon,
        settings=settings,
        strategy=base.strategy,
    )
    results: dict[int, TaskResult] = {}
    ckpt = None
    if checkpoint is not None:
        header = {
            "model": model.sha256,
            "contexts": contexts.sha256(),
            "settings": settings.model_dump(mode="json"),
            "rollout": spec.model_dump(mode="json"),
            "strategy": base.strategy,
            "horizon": base.horizon,
            "shares": [list(s) for s in shares],
            "groups": [g[0] for g in groups],
            "reference": _digest(base.ref_steps),
            "onnxruntime": onnxruntime.__version__,
            "edgetqs": edgetqs_version(),
        }
        ckpt, results, said = Checkpoint.open(checkpoint, header, tasks, base.horizon)
        if said and log:
            log(said)
    if progress and results:
        progress(len(results), len(tasks))

    def done(r: TaskResult) -> None:
        results[r.index] = r
        if ckpt is not None:
            ckpt.add(r)
        if progress:
            progress(len(results), len(tasks))

    complete = False
    try:
        retried = backend.run(Sweep(job, model, base.roll), [t for t in tasks if t.index not in results], done)
        scored = _group_scores(groups, tasks, results, base.horizon, settings.eps == "relative")
        complete = True
    finally:
        if ckpt is not None:
            ckpt.close(complete)
    out_notes = tuple(base.notes)
    if retried:
        out_notes += (f"{backend.name} backend: {retried} task run(s) lost with a worker were run again",)
    return Scores(
        edgetqs_version=edgetqs_version(),
        model=model.name,
        model_sha256=model.sha256,
        model_path=str(model.path.resolve()) if model.path else "",
        rollout=spec,
        settings=settings,
        horizon=base.horizon,
        horizon_rule=base.rule,
        contexts=contexts.info(),
        contexts_sha256=contexts.sha256(),
        state_exponent=base.state,
        groups=tuple(g.model_copy(update={"label": group_label(model, g.name, tuple(g.tensors))}) for g in scored),
        wall_seconds=time.perf_counter() - t0,
        forward_calls=base.calls + sum(r.calls for r in results.values()),
        workers=backend.workers,
        strategy=base.strategy,
        notes=out_notes,
        excluded=excluded_tensors(model),
    )


def _group_scores(
    groups: Sequence[tuple[str, tuple[str, ...]]], tasks: Sequence[Task], results: dict[int, TaskResult], horizon: int, relative: bool
) -> tuple[GroupScore, ...]:
    """Each group's score from its tasks, in graph order."""
    by_group: dict[int, list[TaskResult]] = {}
    for t in tasks:  # tasks are in (group, share) order: each group's parts come in context order
        by_group.setdefault(t.group, []).append(results[t.index])
    return tuple(group_score(name, tensors, by_group[i], horizon, relative) for i, (name, tensors) in enumerate(groups))


def _with_ladder(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings,
    backend: SweepBackend,
    progress: Progress | None,
    notes: tuple[str, ...],
    strategy: str,
    checkpoint: Path | None,
    log: Callable[[str], None] | None,
) -> Scores:
    """The sweep with the main probe, then the quant probe at each bit-width of the ladder.

    The knapsack then prices "group g at b bits" with the gain measured at b bits rather than with
    one small-perturbation gain: large residuals (2-3 bits) leave the linear regime, where one gain
    under- or over-states the damage."""
    base = settings.model_copy(update={"ladder": ()})
    n = len(settings.ladder) + 1

    def sub(i: int) -> Progress | None:
        if progress is None:
            return None
        return lambda d, t: progress(i * t + d, n * t)

    def part(suffix: str) -> Path | None:
        return checkpoint.with_name(f"{checkpoint.name}.{suffix}") if checkpoint is not None else None

    main = _sweep(model, spec, contexts, base, backend, sub(0), notes, strategy, part("main"), log)
    quant: dict[int, Scores] = {}
    for i, b in enumerate(sorted({int(x) for x in settings.ladder}), start=1):
        quant[b] = _sweep(
            model,
            spec,
            contexts,
            base.model_copy(update={"probe": "quant", "bits": b, "horizon": main.horizon}),
            backend,
            sub(i),
            (),
            main.strategy,
            part(f"{b}bits"),
            log,
        )
    return with_ladder(main, quant).model_copy(update={"settings": settings})


def ladder_settings(main: ProbeSettings, bits: int, horizon: int) -> ProbeSettings:
    """The quant probe's settings at ``bits`` for the ladder of a sweep with ``main`` settings, on the main sweep's horizon."""
    return main.model_copy(update={"ladder": (), "probe": "quant", "bits": int(bits), "horizon": horizon})


def with_ladder(main: Scores, quant: dict[int, Scores]) -> Scores:
    """The main sweep's scores with each group's quant-probe gain per bit-width (``gain_by_bits``) from ``quant``
    (bits -> the quant sweep at those bits, `ladder_settings`): what ``ladder=`` computes, assembled from sweeps that
    may have run separately (or come from the score cache), so a caller holding the main sweep need not repeat it.

    Raises:
        BadInputError: a quant sweep with other groups or another horizon than the main one.
    """
    ladder: dict[str, dict[str, float | None]] = {g.name: {} for g in main.groups}
    calls, wall = main.forward_calls, main.wall_seconds
    for b in sorted(quant):
        q = quant[b]
        if [g.name for g in q.groups] != list(ladder) or q.horizon != main.horizon:
            raise BadInputError(
                f"the {b}-bit quant sweep does not match the main sweep (other groups or horizon {q.horizon} != {main.horizon})"
            )
        calls += q.forward_calls
        wall += q.wall_seconds
        for g in q.groups:
            ladder[g.name][str(b)] = None if g.diverged_step is not None else (g.gain if g.gain is not None else 0.0)  # None: diverged
    groups = tuple(g.model_copy(update={"gain_by_bits": ladder[g.name]}) for g in main.groups)
    bits = sorted(quant)
    return main.model_copy(
        update={
            "groups": groups,
            "settings": main.settings.model_copy(update={"ladder": tuple(bits)}),
            "forward_calls": calls,
            "wall_seconds": wall,
            "notes": tuple(main.notes) + (f"quant-probe gains measured at {', '.join(map(str, bits))} bits",),
        }
    )
