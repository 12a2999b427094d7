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

import math
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..core.contexts import Contexts
from ..core.metrics import divergence, inverse_spread
from ..core.model import Model
from ..core.results import edgetqs_version
from ..core.rollout import Rollout, RolloutSpec
from ..core.weights import excluded_tensors
from ..errors import BadInputError, DivergedRolloutError
from .groups import group_label, make_groups
from .probes import PROBES, probe_delta, rms
from .scores import DEAD_GAMMA, GroupScore, ProbeSettings, Scores, StateExponent

TINY = float(np.finfo(np.float32).tiny)
STRATEGIES = ("auto", "feed", "rebuild")
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


class GroupScorer:
    """State shared by every group of one sweep (built once per process).

    ``feed``: one session whose weights are graph inputs, the group's perturbed tensors fed per
    rollout. ``rebuild``: a fresh, fully optimised session per group with the perturbed tensors
    baked in as constants (wins when the graph optimiser needs constant weights, e.g. NCHWc conv).
    """

    def __init__(
        self,
        model: Model,
        spec: RolloutSpec,
        contexts: list[np.ndarray],
        statics: dict[str, np.ndarray],
        reference: list[np.ndarray],
        inv_spread: list[np.ndarray],
        horizon: int,
        settings: ProbeSettings,
        strategy: str = "feed",
        threads: int = 0,
        roll: Rollout | None = None,
    ) -> None:
        self.model = model
        self.spec = spec
        self.statics = statics
        self.strategy = strategy
        self.threads = threads
        self.roll = roll or Rollout(model, spec, statics, threads=threads, model_bytes=None if strategy == "feed" else model.bytes)
        self.contexts = contexts
        self.reference = reference
        self.inv_spread = inv_spread
        self.horizon = horizon
        self.settings = settings
        self.calls = 0

    def score_group(self, name: str, tensors: tuple[str, ...]) -> GroupScore:
        settings = self.settings

        def delta_of(new: dict[str, np.ndarray]) -> np.ndarray:
            return np.concatenate([(new[t].astype(np.float64) - self.model.weight_array(t)).ravel() for t in tensors])

        new = probe_delta(self.model, tensors, settings)
        delta = delta_of(new)
        probe = PROBES.get(settings.probe)
        if not delta.any() and probe.may_be_exact:
            # round-to-nearest represents this group exactly (a one-element bias, say): quantizing it
            # costs nothing at these bits, but the planner still needs its gain: measure with the fallback
            settings = settings.model_copy(update={"probe": probe.fallback})
            new = probe_delta(self.model, tensors, settings)
            delta = delta_of(new)
        eps = rms(delta)
        n_params = int(delta.size)
        w_rms = rms(np.concatenate([self.model.weight_array(t).astype(np.float64).ravel() for t in tensors]))
        if self.strategy == "feed":
            res = self.roll.run(self.contexts, self.horizon, overrides=new)
        else:
            roll = Rollout(self.model, self.spec, self.statics, threads=self.threads, model_bytes=self.model.with_weights(new))
            res = roll.run(self.contexts, self.horizon)
        self.calls += res.forward_calls
        if res.first_nonfinite is not None:
            return GroupScore(
                name=name,
                tensors=tensors,
                n_params=n_params,
                gamma=None,
                gamma_curve=tuple([None] * self.horizon),
                gain=None,
                eps=eps,
                dead=False,
                diverged_step=res.first_nonfinite,
                probe=settings.probe,
                weight_rms=w_rms,
            )
        e = divergence(res.steps, self.reference, self.inv_spread)
        return summarise(name, tensors, n_params, e, eps, settings.probe, w_rms, settings.eps == "relative")


_WORKER: GroupScorer | None = None


def _worker_init(
    model_bytes: bytes,
    path: str | None,
    min_size: int,
    spec: RolloutSpec,
    contexts: list[np.ndarray],
    statics: dict[str, np.ndarray],
    reference: list[np.ndarray],
    inv_spread: list[np.ndarray],
    horizon: int,
    settings: ProbeSettings,
    strategy: str,
) -> None:
    import onnx

    global _WORKER
    model = Model(
        onnx.load_from_string(model_bytes),
        Path(path) if path else None,
        min_weight_size=min_size,
        include=settings.include,
        exclude=settings.exclude,
    )
    _WORKER = GroupScorer(model, spec, contexts, statics, reference, inv_spread, horizon, settings, strategy, threads=1)


def _worker_run(batch: list[tuple[str, tuple[str, ...]]]) -> tuple[list[GroupScore], int]:
    if _WORKER is None:
        raise RuntimeError("worker process was not initialised")
    before = _WORKER.calls
    out = [_WORKER.score_group(n, t) for n, t in batch]
    return out, _WORKER.calls - before


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
) -> tuple[StateExponent, np.ndarray]:
    """Perturb the initial state by ``scale`` variable spreads; returns the exponent and e_t [T, K]."""
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
    res = roll.run(pert, horizon)
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
    """What every group of a sweep is compared with: the reference rollout on the strategy's session."""

    roll: Rollout
    ref_steps: list[np.ndarray]
    inv: list[np.ndarray]
    state: StateExponent
    horizon: int
    rule: str
    strategy: str
    calls: int
    notes: tuple[str, ...]


def _baseline(
    model: Model, spec: RolloutSpec, contexts: Contexts, settings: ProbeSettings, strategy: str, notes: tuple[str, ...]
) -> _Baseline:
    """The reference rollout, the model's own exponent, the horizon, and (``auto``) the cheaper strategy.

    The two whole-trajectory rollouts every sweep needs double as the timing of each strategy: the
    reference runs on a freshly built, fully optimised session (exactly a rebuild group's cost, build and
    warm-up included); the state-perturbation rollout runs on the feed session."""
    arrays, statics = contexts.arrays, contexts.statics
    probe_t = settings.horizon or settings.max_horizon  # the longest horizon that may be needed
    first = "feed" if strategy == "feed" else "rebuild"
    tb = time.perf_counter()
    roll = Rollout(model, spec, statics, model_bytes=None if first == "feed" else model.bytes)
    ref = roll.run(arrays, probe_t)
    t_first = time.perf_counter() - tb
    if ref.first_nonfinite is not None:
        raise DivergedRolloutError(
            f"the float model's own rollout becomes non-finite at step {ref.first_nonfinite} of {probe_t}; "
            f"use --horizon {max(ref.first_nonfinite - 1, 1)} or fewer, or check the contexts' units"
        )
    inv = inverse_spreads(spec, contexts, ref.steps)
    state_roll = roll
    extra_calls = 0
    if strategy == "auto":
        state_roll = Rollout(model, spec, statics)
        state_roll.run([a[:1] for a in arrays], 2)  # warm-up: a feed group pays it once per sweep, not per group
    tf = time.perf_counter()
    state, e_state = state_exponent(state_roll, contexts, ref.steps, inv, probe_t, spec, settings.state_scale, settings.seed)
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
            ref = roll.run(arrays, probe_t)
        else:
            extra_calls = state_roll.forward_calls
    if settings.horizon is None:
        horizon, rule = choose_horizon(e_state.mean(axis=1), state.eps, settings.max_horizon)
        state = StateExponent(
            exponent=state.curve[horizon - 1], curve=state.curve[:horizon], eps=state.eps, error_curve=state.error_curve[:horizon]
        )
    else:
        horizon, rule = settings.horizon, "fixed"
    return _Baseline(roll, [s[:horizon] for s in ref.steps], inv, state, horizon, rule, strategy, extra_calls + roll.forward_calls, notes)


def run_sweep(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings | None = None,
    workers: int = 1,
    progress: Progress | None = None,
    notes: tuple[str, ...] = (),
    strategy: str = "auto",
) -> Scores:
    """Score every weight group of ``model`` with TQS.

    Args:
        model: the loaded model.
        spec: its rollout.
        contexts: K initial states (`edgetqs.core.contexts`).
        settings: probe, granularity, horizon, seed.
        workers: parallel processes for the groups (each runs a single-threaded session).
        progress: called with (groups done, groups total).
        strategy: ``feed`` (one session, weights as inputs), ``rebuild`` (a session per group) or
            ``auto`` (the cheaper, timed on the reference and state rollouts; recorded in the result).

    Returns:
        The `Scores`.

    Raises:
        BadInputError: bad settings, workers or strategy.
        DivergedRolloutError: the float reference rollout itself becomes non-finite.
    """
    settings = settings or ProbeSettings()
    settings.check()
    if not 1 <= workers <= 1024:
        raise BadInputError(f"workers {workers}; expected 1 to 1024 processes")
    if strategy not in STRATEGIES:
        raise BadInputError(f"strategy '{strategy}'; expected one of {', '.join(STRATEGIES)}")
    if settings.ladder:
        return _with_ladder(model, spec, contexts, settings, workers, progress, notes, strategy)
    t0 = time.perf_counter()
    base = _baseline(model, spec, contexts, settings, strategy, notes)
    groups = make_groups(model, settings.granularity, settings.block_depth)
    results, calls = _score_groups(model, spec, contexts, settings, base, groups, workers, progress)
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
        groups=tuple(results[name].model_copy(update={"label": group_label(model, name, t)}) for name, t in groups),
        wall_seconds=time.perf_counter() - t0,
        forward_calls=base.calls + calls,
        workers=workers,
        strategy=base.strategy,
        notes=tuple(base.notes),
        excluded=excluded_tensors(model),
    )


def _score_groups(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings,
    base: _Baseline,
    groups: list[tuple[str, tuple[str, ...]]],
    workers: int,
    progress: Progress | None,
) -> tuple[dict[str, GroupScore], int]:
    """Every group's score, in this process or in ``workers`` processes; and the model calls they made."""
    results: dict[str, GroupScore] = {}
    if workers == 1:
        scorer = GroupScorer(
            model, spec, contexts.arrays, contexts.statics, base.ref_steps, base.inv, base.horizon, settings, base.strategy, roll=base.roll
        )
        for i, (name, tensors) in enumerate(groups):
            results[name] = scorer.score_group(name, tensors)
            if progress:
                progress(i + 1, len(groups))
        return results, scorer.calls
    import multiprocessing as mp

    calls = 0
    n_batches = min(len(groups), workers * 4)
    batches = [groups[i::n_batches] for i in range(n_batches)]
    init_args = (
        model.bytes,
        str(model.path) if model.path else None,
        _min_size(model),
        spec,
        contexts.arrays,
        contexts.statics,
        base.ref_steps,
        base.inv,
        base.horizon,
        settings,
        base.strategy,
    )
    with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=init_args) as pool:
        with _sigint_ignored():  # workers start during submit and inherit this: Ctrl-C is the parent's, which ends them
            futures = [pool.submit(_worker_run, b) for b in batches]
        try:
            for f in as_completed(futures):
                scored, n = f.result()
                calls += n
                for g in scored:
                    results[g.name] = g
                if progress:
                    progress(len(results), len(groups))
        except BaseException:
            _stop_workers(pool)
            raise
    return results, calls


@contextmanager
def _sigint_ignored() -> Iterator[None]:
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


def _stop_workers(pool: ProcessPoolExecutor) -> None:
    """Ctrl-C or an error while workers run: end them now; leaving the pool would wait for every batch."""
    for proc in list((getattr(pool, "_processes", None) or {}).values()):
        proc.terminate()
    pool.shutdown(wait=False, cancel_futures=True)


def _with_ladder(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    settings: ProbeSettings,
    workers: int,
    progress: Progress | None,
    notes: tuple[str, ...],
    strategy: str,
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

    main = run_sweep(model, spec, contexts, base, workers, sub(0), notes, strategy)
    ladder: dict[str, dict[str, float | None]] = {g.name: {} for g in main.groups}
    calls, wall = main.forward_calls, main.wall_seconds
    for i, b in enumerate(sorted({int(x) for x in settings.ladder}), start=1):
        q = run_sweep(
            model,
            spec,
            contexts,
            base.model_copy(update={"probe": "quant", "bits": b, "horizon": main.horizon}),
            workers,
            sub(i),
            (),
            main.strategy,
        )
        calls += q.forward_calls
        wall += q.wall_seconds
        for g in q.groups:
            ladder[g.name][str(b)] = None if g.diverged_step is not None else (g.gain if g.gain is not None else 0.0)  # None: diverged
    groups = tuple(g.model_copy(update={"gain_by_bits": ladder[g.name]}) for g in main.groups)
    return main.model_copy(
        update={
            "groups": groups,
            "settings": settings,
            "forward_calls": calls,
            "wall_seconds": wall,
            "notes": tuple(main.notes) + (f"quant-probe gains measured at {', '.join(map(str, sorted(set(settings.ladder))))} bits",),
        }
    )


def _min_size(model: Model) -> int:
    return min((w.size for w in model.weights), default=1)
