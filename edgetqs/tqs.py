"""TQS: the trajectory-based quantization sensitivity score.

For each weight group g: perturb only g by d_g, roll out from K contexts for T steps, and measure
the divergence e_t(c) from the reference rollout (RMS over the state, each channel divided by its
spread in the reference trajectories). Then

    gamma_g(t) = mean_c (1/t) ln(e_t(c) / eps_g),   eps_g = RMS(d_g)
    A_g        = mean_c e_T(c) / eps_g

gamma_g = gamma_g(T) is a finite-time Lyapunov exponent whose initial separation is the weight
perturbation; A_g is the output error one unit of weight error buys at T. The model's own exponent
(perturb the initial state instead) tells shared chaos from a group's excess sensitivity.
"""

from __future__ import annotations

import math
import re
import time
import zlib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Literal

import numpy as np

from .contexts import Contexts
from .jsonfile import read_json, write_json
from .errors import BadInputError, DivergedRolloutError
from .model import Model
from .quantize import Precision, fake_quant
from .rollout import Rollout, RolloutSpec

SCHEMA_VERSION = 1
Probe = Literal["gauss", "quant"]
Strategy = Literal["auto", "feed", "rebuild"]
GroupBy = Literal["tensor", "block"]
DEAD_GAMMA = -50.0
TINY = float(np.finfo(np.float32).tiny)


def parse_horizon(value: int | str) -> int | None:
    """``auto`` -> None (see `choose_horizon`); an integer or its text -> that many steps."""
    if value == "auto":
        return None
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadInputError(f"horizon '{value}'; expected a positive integer or 'auto'") from None


@dataclass(frozen=True)
class ProbeSettings:
    """Everything the score depends on besides the model and the contexts.

    Attributes:
        probe: ``gauss`` (d ~ N(0, (scale * rms(W))^2) per tensor) or ``quant`` (d = Q_b(W) - W).
        scale: relative size of the gauss probe.
        bits: bit-width of the quant probe (round-to-nearest, symmetric, per output channel).
        granularity: one group per tensor, or per block of tensors sharing a name prefix.
        block_depth: name components that make a block (None: the parent, i.e. all but the last).
        horizon: rollout steps T, or None for ``auto`` (see `choose_horizon`).
        max_horizon: upper bound for ``auto``.
        seed: seeds every probe (per group, independent of order and workers).
        state_scale: relative size of the initial-state perturbation for the model's own exponent.
    """

    probe: Probe = "gauss"
    scale: float = 1e-3
    bits: int = 4
    granularity: GroupBy = "tensor"
    block_depth: int | None = None
    horizon: int | None = 20
    max_horizon: int = 64
    seed: int = 0
    state_scale: float = 1e-3
    ladder: tuple[int, ...] = ()  # also measure the quant probe's gain at each of these bit-widths

    @classmethod
    def from_config(cls, cfg: dict) -> "ProbeSettings":
        """Settings from a project's ``[score]`` table merged with command-line values: ``horizon``
        may be ``auto``, an integer or its text; ``ladder`` a list or ``"2,3,4"``. Other keys (workers) are ignored."""
        s = cls()
        for key in ("probe", "granularity", "block_depth", "max_horizon", "scale", "bits", "seed", "state_scale"):
            if cfg.get(key) is not None:
                s = replace(s, **{key: cfg[key]})
        if cfg.get("horizon") is not None:
            s = replace(s, horizon=parse_horizon(cfg["horizon"]))
        lad = cfg.get("ladder")
        if lad:
            try:
                s = replace(s, ladder=tuple(int(x) for x in (lad.split(",") if isinstance(lad, str) else lad)))
            except ValueError:
                raise BadInputError(f"ladder '{lad}'; expected bit-widths such as 2,3,4,5,6,8") from None
        s.validate()
        return s

    def validate(self) -> None:
        if self.probe not in ("gauss", "quant"):
            raise BadInputError(f"probe '{self.probe}'; expected 'gauss' or 'quant'")
        if self.granularity not in ("tensor", "block"):
            raise BadInputError(f"granularity '{self.granularity}'; expected 'tensor' or 'block'")
        if self.horizon is not None and self.horizon <= 0:
            raise BadInputError(f"horizon {self.horizon}; expected a positive number of steps or 'auto'")
        if self.max_horizon <= 0:
            raise BadInputError(f"max horizon {self.max_horizon}; expected a positive number of steps")
        if not 2 <= self.bits <= 8:
            raise BadInputError(f"quant probe bits {self.bits}; expected 2..8")
        bad = [b for b in self.ladder if not 2 <= int(b) <= 8]
        if bad:
            raise BadInputError(f"ladder bit-widths {bad}; expected 2..8")
        if not self.scale > 0:
            raise BadInputError(f"gauss probe scale {self.scale}; expected > 0 (e.g. 1e-3)")
        if self.block_depth is not None and self.block_depth < 1:
            raise BadInputError(f"block depth {self.block_depth}; expected >= 1")


@dataclass(frozen=True)
class GroupScore:
    """TQS of one weight group. ``gamma`` is None when dead (no effect) or diverged (non-finite)."""

    name: str
    tensors: tuple[str, ...]
    n_params: int
    gamma: float | None
    gamma_curve: tuple[float | None, ...]
    gain: float | None
    eps: float
    dead: bool
    diverged_step: int | None
    probe: str
    # quant probe at each bit-width of the ladder (--ladder): the output error per unit of weight error
    # when this group alone is rounded to that many bits; None where that rollout diverged
    gain_by_bits: dict[str, float | None] | None = None

    @property
    def sort_key(self) -> float:
        if self.diverged_step is not None:
            return math.inf
        if self.dead or self.gamma is None:
            return -math.inf
        return self.gamma


@dataclass(frozen=True)
class StateExponent:
    """The model's own finite-time exponent: initial state perturbed, weights untouched."""

    exponent: float | None
    curve: tuple[float | None, ...]
    eps: float
    error_curve: tuple[float, ...]  # mean over contexts of e_t, normalised units


@dataclass(frozen=True)
class Scores:
    """The result of a sweep, written as ``scores.json``."""

    model: str
    model_sha256: str
    spec: RolloutSpec
    settings: ProbeSettings
    horizon: int
    horizon_rule: str
    contexts: dict
    groups: tuple[GroupScore, ...]
    state: StateExponent
    wall_seconds: float
    forward_calls: int
    workers: int
    edgetqs_version: str
    strategy: str = "feed"
    model_path: str = ""
    schema_version: int = SCHEMA_VERSION
    notes: tuple[str, ...] = field(default=())

    def ranked(self) -> list[GroupScore]:
        """Most sensitive first: diverged groups, then by gamma, dead groups last."""
        return sorted(self.groups, key=lambda g: g.sort_key, reverse=True)

    def to_dict(self) -> dict:
        d = {
            "schema_version": self.schema_version,
            "edgetqs_version": self.edgetqs_version,
            "model": self.model,
            "model_sha256": self.model_sha256,
            "model_path": self.model_path,
            "rollout": self.spec.to_dict(),
            "settings": asdict(self.settings),
            "horizon": self.horizon,
            "horizon_rule": self.horizon_rule,
            "contexts": self.contexts,
            "state_exponent": asdict(self.state),
            "groups": [asdict(g) for g in self.groups],
            "wall_seconds": self.wall_seconds,
            "forward_calls": self.forward_calls,
            "workers": self.workers,
            "strategy": self.strategy,
            "notes": list(self.notes),
        }
        return d

    @classmethod
    def from_dict(cls, d: dict) -> "Scores":
        if d.get("schema_version") != SCHEMA_VERSION:
            raise BadInputError(f"scores file has schema_version {d.get('schema_version')}; this edgetqs reads {SCHEMA_VERSION}: rerun `edgetqs score`")
        st = d["state_exponent"]
        return cls(
            model=d["model"],
            model_sha256=d["model_sha256"],
            spec=RolloutSpec.from_dict(d["rollout"]),
            settings=ProbeSettings(**{**d["settings"], "ladder": tuple(d["settings"].get("ladder", ()))}),
            horizon=d["horizon"],
            horizon_rule=d["horizon_rule"],
            contexts=d["contexts"],
            groups=tuple(
                GroupScore(**{**g, "tensors": tuple(g["tensors"]), "gamma_curve": tuple(g["gamma_curve"])}) for g in d["groups"]
            ),
            state=StateExponent(st["exponent"], tuple(st["curve"]), st["eps"], tuple(st["error_curve"])),
            wall_seconds=d["wall_seconds"],
            forward_calls=d["forward_calls"],
            workers=d["workers"],
            strategy=d.get("strategy", "feed"),
            model_path=d.get("model_path", ""),
            edgetqs_version=d["edgetqs_version"],
            notes=tuple(d.get("notes", ())),
        )

    def save(self, path: str | Path) -> Path:
        """Write JSON atomically (temporary name, then rename)."""
        return write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> "Scores":
        try:
            return cls.from_dict(read_json(path, "scores.json", "edgetqs score"))
        except (KeyError, TypeError) as exc:
            raise BadInputError(f"'{path}' is not a scores.json written by edgetqs (missing or bad field {exc})") from None


# ---------------------------------------------------------------- groups

def _split(name: str) -> list[str]:
    return [p for p in re.split(r"[./:]", name) if p]


def block_of(name: str, depth: int | None) -> str:
    """The block a tensor belongs to: its first ``depth`` name components (None: all but the last)."""
    parts = _split(name)
    if len(parts) <= 1:
        return name
    keep = len(parts) - 1 if depth is None else min(depth, len(parts) - 1)
    return ".".join(parts[:keep])


def make_groups(model: Model, granularity: GroupBy, depth: int | None = None) -> list[tuple[str, tuple[str, ...]]]:
    """(group name, tensor names) in graph order."""
    if granularity == "tensor":
        return [(w.name, (w.name,)) for w in model.weights]
    groups: dict[str, list[str]] = {}
    for w in model.weights:
        groups.setdefault(block_of(w.name, depth), []).append(w.name)
    return [(k, tuple(v)) for k, v in groups.items()]


# ---------------------------------------------------------------- the sweep

def _rms(x: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(x, dtype=np.float64)))) if x.size else 0.0


def _group_seed(seed: int, name: str) -> np.random.Generator:
    # a group's probe depends on (seed, name) only: same numbers serially or in any worker
    return np.random.default_rng([seed, zlib.crc32(name.encode())])


def probe_delta(model: Model, tensors: tuple[str, ...], settings: ProbeSettings) -> dict[str, np.ndarray]:
    """Perturbed weights for one group (already cast to the stored dtype)."""
    rng = _group_seed(settings.seed, "|".join(tensors))
    out = {}
    for t in tensors:
        w = model.weight_array(t)
        if settings.probe == "gauss":
            # scaled per tensor: a bias and a kernel in one block each move by the same relative amount
            rms = _rms(w)
            s = settings.scale * (rms if rms > 0 else 1.0)  # an all-zero tensor still gets a probe
            new = (w.astype(np.float64) + rng.standard_normal(w.shape) * s).astype(w.dtype)
        else:
            new = fake_quant(w, Precision("int", settings.bits, "channel"), model.layout(t))
        out[t] = np.ascontiguousarray(new)
    return out


def divergence(steps: list[np.ndarray], reference: list[np.ndarray], inv_scale: list[np.ndarray]) -> np.ndarray:
    """e_t(c) as [T, K]: RMS over every fed-back value of the difference, each channel divided by its spread."""
    total = None
    count = 0
    for s, r, inv in zip(steps, reference, inv_scale):
        d = (s.astype(np.float64) - r) * inv
        sq = np.square(d).reshape(d.shape[0], d.shape[1], -1).sum(axis=2)
        total = sq if total is None else total + sq
        count += int(np.prod(d.shape[2:]))
    return np.sqrt(total / max(count, 1))


def rms_by_lead(e: np.ndarray) -> np.ndarray:
    """RMS over contexts of the divergence e [T, K], per lead step."""
    return np.sqrt(np.mean(np.square(e), axis=1))


class _Sweep:
    """State shared by every group of one sweep (built once per process).

    ``feed``: one session whose weights are graph inputs, the group's perturbed tensors fed per
    rollout. ``rebuild``: a fresh, fully optimised session per group with the perturbed tensors
    baked in as constants (wins when the graph optimiser needs constant weights, e.g. NCHWc conv).
    """

    def __init__(self, model: Model, spec: RolloutSpec, contexts: list[np.ndarray], statics: dict[str, np.ndarray],
                 reference: list[np.ndarray], inv_scale: list[np.ndarray], horizon: int, settings: ProbeSettings,
                 strategy: str = "feed", threads: int = 0, roll: Rollout | None = None) -> None:
        self.model = model
        self.spec = spec
        self.statics = statics
        self.strategy = strategy
        self.threads = threads
        self.roll = roll or Rollout(model, spec, statics, threads=threads, model_bytes=None if strategy == "feed" else model.bytes)
        self.contexts = contexts
        self.reference = reference
        self.inv_scale = inv_scale
        self.horizon = horizon
        self.settings = settings
        self.calls = 0

    def score_group(self, name: str, tensors: tuple[str, ...]) -> GroupScore:
        settings = self.settings
        def delta_of(new: dict[str, np.ndarray]) -> np.ndarray:
            return np.concatenate([(new[t].astype(np.float64) - self.model.weight_array(t)).ravel() for t in tensors])

        new = probe_delta(self.model, tensors, settings)
        delta = delta_of(new)
        if not delta.any() and settings.probe == "quant":
            # round-to-nearest represents this group exactly (a one-element bias, say): quantizing it
            # costs nothing at these bits, but the planner still needs its gain: measure with gauss
            settings = replace(settings, probe="gauss")
            new = probe_delta(self.model, tensors, settings)
            delta = delta_of(new)
        eps = _rms(delta)
        n_params = int(delta.size)
        if self.strategy == "feed":
            res = self.roll.run(self.contexts, self.horizon, overrides=new)
        else:
            roll = Rollout(self.model, self.spec, self.statics, threads=self.threads, model_bytes=self.model.with_weights(new))
            res = roll.run(self.contexts, self.horizon)
        self.calls += res.forward_calls
        if res.first_nonfinite is not None:
            return GroupScore(name, tensors, n_params, None, tuple([None] * self.horizon), None, eps, False, res.first_nonfinite, settings.probe)
        e = divergence(res.steps, self.reference, self.inv_scale)
        return summarise(name, tensors, n_params, e, eps, settings.probe)


def summarise(name: str, tensors: tuple[str, ...], n_params: int, e: np.ndarray, eps: float, probe: str) -> GroupScore:
    """gamma curve, gamma and gain from the divergence [T, K] and the perturbation size."""
    t = np.arange(1, e.shape[0] + 1)[:, None]
    if not (e[-1] > 0).any():
        return GroupScore(name, tensors, n_params, None, tuple([None] * e.shape[0]), 0.0, eps, True, None, probe)
    logs = np.log(np.maximum(e, TINY) / eps) / t
    curve = logs.mean(axis=1)
    gamma = float(curve[-1])
    gain = float(np.mean(e[-1] / eps))
    dead = gamma < DEAD_GAMMA
    return GroupScore(name, tensors, n_params, None if dead else gamma, tuple(float(c) for c in curve), gain, eps, dead, None, probe)


_WORKER: _Sweep | None = None


def _worker_init(model_bytes: bytes, path: str | None, min_size: int, *args: Any) -> None:
    import onnx

    global _WORKER
    model = Model(onnx.load_from_string(model_bytes), Path(path) if path else None, min_weight_size=min_size)
    _WORKER = _Sweep(model, *args, threads=1)


def _worker_run(batch: list[tuple[str, tuple[str, ...]]]) -> tuple[list[GroupScore], int]:
    if _WORKER is None:
        raise RuntimeError("worker process was not initialised")
    before = _WORKER.calls
    out = [_WORKER.score_group(n, t) for n, t in batch]
    return out, _WORKER.calls - before


def channel_inv_scale(steps: list[np.ndarray], spec: RolloutSpec, contexts: list[np.ndarray]) -> list[np.ndarray]:
    """1 / per-channel spread of the reference trajectory, broadcastable to [T, K, ...]."""
    out = []
    for s, c in zip(steps, contexts):
        ax = spec.channel_axis if spec.channel_axis is not None else -1
        ax_s = ax + 1 if ax >= 0 else s.ndim + ax  # steps carry a leading T axis
        moved = np.moveaxis(s.astype(np.float64), ax_s, 0).reshape(s.shape[ax_s], -1)
        spread = moved.std(axis=1)
        if (spread == 0).any():  # fall back on the contexts, then on 1: never divide by zero
            ax_c = ax if ax >= 0 else c.ndim + ax
            if c.shape[ax_c] == s.shape[ax_s]:
                alt = np.moveaxis(c.astype(np.float64), ax_c, 0).reshape(c.shape[ax_c], -1).std(axis=1)
                spread = np.where(spread == 0, alt, spread)
            spread = np.where(spread == 0, 1.0, spread)
        shape = [1] * s.ndim
        shape[ax_s] = s.shape[ax_s]
        out.append((1.0 / spread).reshape(shape))
    return out


def state_exponent(roll: Rollout, contexts: list[np.ndarray], reference: list[np.ndarray], inv_scale: list[np.ndarray],
                   horizon: int, spec: RolloutSpec, scale: float, seed: int) -> tuple[StateExponent, np.ndarray]:
    """Perturb the initial state by ``scale`` channel spreads; returns the exponent and e_t [T, K]."""
    rng = np.random.default_rng([seed, 7])
    pert, sizes = [], []
    for c, inv in zip(contexts, inv_scale):
        spread = 1.0 / inv[0]  # drop T axis: broadcastable to [K, ...]
        if spec.mode == "window":
            spread = spread.reshape((1,) * (c.ndim - 1) + (-1,))
        d = rng.standard_normal(c.shape) * scale * spread
        pert.append((c + d).astype(c.dtype))
        sizes.append(((pert[-1] - c) / spread).reshape(c.shape[0], -1))
    e0 = np.sqrt(np.mean(np.square(np.concatenate(sizes, axis=1), dtype=np.float64), axis=1))  # [K]
    res = roll.run(pert, horizon)
    e = divergence(res.steps, reference, inv_scale)
    t = np.arange(1, horizon + 1)[:, None]
    with np.errstate(all="ignore"):
        logs = np.log(np.maximum(e, TINY) / e0[None, :]) / t
    curve = [float(v) if np.isfinite(v) else None for v in logs.mean(axis=1)]
    err = [float(v) if np.isfinite(v) else float("nan") for v in e.mean(axis=1)]
    return StateExponent(curve[-1], tuple(curve), float(e0.mean()), tuple(0.0 if math.isnan(v) else v for v in err)), e


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


def run_sweep(model: Model, spec: RolloutSpec, contexts: Contexts, settings: ProbeSettings = ProbeSettings(), workers: int = 1,
              progress: Callable[[int, int], None] | None = None, notes: tuple[str, ...] = (), strategy: Strategy = "auto") -> Scores:
    """Score every weight group of ``model`` with TQS.

    Args:
        model: the loaded model.
        spec: its rollout.
        contexts: K initial states (`edgetqs.contexts`).
        settings: probe, granularity, horizon, seed.
        workers: parallel processes for the groups (each runs a single-threaded session).
        progress: called with (groups done, groups total).
        strategy: ``feed`` (one session, weights as inputs), ``rebuild`` (a session per group) or
            ``auto`` (the cheaper, timed on the reference and state rollouts; recorded in the result).

    Returns:
        The `Scores`.

    Raises:
        DivergedRolloutError: the float reference rollout itself becomes non-finite.
    """
    from . import __version__

    settings.validate()
    if workers < 1:
        raise BadInputError(f"workers {workers}; expected >= 1")
    if settings.ladder:
        return _with_ladder(model, spec, contexts, settings, workers, progress, notes, strategy)
    if strategy not in ("auto", "feed", "rebuild"):
        raise BadInputError(f"strategy '{strategy}'; expected auto, feed or rebuild")
    t0 = time.perf_counter()
    arrays = contexts.arrays
    statics = contexts.statics
    # the reference and the state exponent run to the longest horizon that may be needed
    probe_t = settings.horizon or settings.max_horizon
    timing: dict[str, float] = {}
    # auto: the two whole-trajectory rollouts every sweep needs double as the timing of each strategy.
    # The reference runs on a freshly built, fully optimised session (exactly a rebuild group's cost,
    # build and warm-up included); the state-perturbation rollout runs on the feed session.
    first = "feed" if strategy == "feed" else "rebuild"
    tb = time.perf_counter()
    roll = Rollout(model, spec, statics, model_bytes=None if first == "feed" else model.bytes)
    ref = roll.run(arrays, probe_t)
    timing[first] = time.perf_counter() - tb
    if ref.first_nonfinite is not None:
        raise DivergedRolloutError(
            f"the float model's own rollout becomes non-finite at step {ref.first_nonfinite} of {probe_t}; "
            f"use --horizon {max(ref.first_nonfinite - 1, 1)} or fewer, or check the contexts' units"
        )
    inv = channel_inv_scale(ref.steps, spec, arrays)
    state_roll = roll
    extra_calls = 0
    if strategy == "auto":
        state_roll = Rollout(model, spec, statics)
        state_roll.run([a[:1] for a in arrays], 2)  # warm-up: a feed group pays it once per sweep, not per group
        tf = time.perf_counter()
    state, e_state = state_exponent(state_roll, arrays, ref.steps, inv, probe_t, spec, settings.state_scale, settings.seed)
    if strategy == "auto":
        timing["feed"] = time.perf_counter() - tf
        strategy = "rebuild" if timing["rebuild"] < 0.9 * timing["feed"] else "feed"
        notes = notes + (f"strategy auto -> {strategy}: one rollout took {timing['rebuild']:.4f} s on a rebuilt session "
                         f"(build included), {timing['feed']:.4f} s with weights fed as inputs",)
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
        ref_steps = [s[:horizon] for s in ref.steps]
        state = StateExponent(state.curve[horizon - 1], state.curve[:horizon], state.eps, state.error_curve[:horizon])
        inv = channel_inv_scale(ref_steps, spec, arrays)  # spreads over the chosen horizon only
    else:
        horizon, rule = settings.horizon, "fixed"
        ref_steps = ref.steps
    groups = make_groups(model, settings.granularity, settings.block_depth)
    calls = extra_calls + roll.forward_calls
    results: dict[str, GroupScore] = {}
    if workers == 1:
        sweep = _Sweep(model, spec, arrays, contexts.statics, ref_steps, inv, horizon, settings, strategy, roll=roll)
        for i, (name, tensors) in enumerate(groups):
            results[name] = sweep.score_group(name, tensors)
            if progress:
                progress(i + 1, len(groups))
        calls += sweep.calls
    else:
        import multiprocessing as mp

        n_batches = min(len(groups), workers * 4)
        batches = [groups[i::n_batches] for i in range(n_batches)]
        init_args = (model.bytes, str(model.path) if model.path else None, _min_size(model), spec, arrays, contexts.statics, ref_steps, inv, horizon, settings, strategy)
        done = 0
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_worker_init, initargs=init_args) as pool:
            futures = [pool.submit(_worker_run, b) for b in batches]
            for f in as_completed(futures):
                scored, n = f.result()
                calls += n
                for g in scored:
                    results[g.name] = g
                done += len(scored)
                if progress:
                    progress(done, len(groups))
    ordered = tuple(results[name] for name, _ in groups)
    return Scores(
        model=model.name,
        model_sha256=model.sha256,
        spec=spec,
        settings=settings,
        horizon=horizon,
        horizon_rule=rule,
        contexts=contexts.describe(),
        groups=ordered,
        state=state,
        wall_seconds=time.perf_counter() - t0,
        forward_calls=calls,
        workers=workers,
        edgetqs_version=__version__,
        strategy=strategy,
        model_path=str(model.path.resolve()) if model.path else "",
        notes=notes,
    )


def _with_ladder(model: Model, spec: RolloutSpec, contexts: Contexts, settings: ProbeSettings, workers: int,
                 progress: Callable[[int, int], None] | None, notes: tuple[str, ...], strategy: Strategy) -> Scores:
    """The sweep with the main probe, then the quant probe at each bit-width of the ladder.

    The knapsack then prices "group g at b bits" with the gain measured at b bits rather than with
    one small-perturbation gain: large residuals (2-3 bits) leave the linear regime, where one gain
    under- or over-states the damage."""
    from dataclasses import replace as _replace

    base = _replace(settings, ladder=())
    n = len(settings.ladder) + 1
    done = [0]

    def sub(i: int):
        if progress is None:
            return None
        return lambda d, t: progress(i * t + d, n * t)

    main = run_sweep(model, spec, contexts, base, workers, sub(0), notes, strategy)
    ladder: dict[str, dict[str, float | None]] = {g.name: {} for g in main.groups}
    calls, wall = main.forward_calls, main.wall_seconds
    for i, b in enumerate(sorted({int(x) for x in settings.ladder}), start=1):
        q = run_sweep(model, spec, contexts, _replace(base, probe="quant", bits=b, horizon=main.horizon), workers, sub(i), (), main.strategy)
        calls += q.forward_calls
        wall += q.wall_seconds
        for g in q.groups:
            ladder[g.name][str(b)] = None if g.diverged_step is not None else (g.gain if g.gain is not None else 0.0)  # None: diverged
        done[0] += 1
    groups = tuple(_replace(g, gain_by_bits=ladder[g.name]) for g in main.groups)
    return _replace(main, groups=groups, settings=settings, forward_calls=calls, wall_seconds=wall,
                    notes=tuple(main.notes) + (f"quant-probe gains measured at {', '.join(map(str, sorted(set(settings.ladder))))} bits",))


def _min_size(model: Model) -> int:
    return min((w.size for w in model.weights), default=1)


def score_model(model: Any, contexts: Any = None, *, spec: RolloutSpec | None = None, k: int = 8,
                settings: ProbeSettings | None = None, workers: int = 1, variables: list[str] | None = None,
                example_input: Any = None, strategy: Strategy = "auto", **settings_kw: Any) -> Scores:
    """Python API: score a model file (or a torch module with ``example_input``) in one call.

    Args:
        model: path to an ``.onnx`` file, a `Model`, or a ``torch.nn.Module`` (needs ``example_input``).
        contexts: path of a contexts file, a `Contexts`, or None to spin up from noise.
        spec: the rollout (inferred when None).
        k: number of contexts.
        settings: probe settings; or pass their fields as keywords (``probe="quant"``, ``horizon=10``).

    Returns:
        The `Scores`.
    """
    from .contexts import read_record, select_contexts, spinup_contexts
    from .model import export_torch, load_model
    from .rollout import infer_spec

    if isinstance(model, (str, Path)):
        m = load_model(model)
    elif isinstance(model, Model):
        m = model
    else:
        import tempfile

        if example_input is None:
            raise BadInputError("a torch module needs example_input= (a tensor with the batch axis first) to be exported")
        tmp = Path(tempfile.mkdtemp()) / "model.onnx"
        m = load_model(export_torch(model, example_input, tmp))
    sp = spec or infer_spec(m)
    st = settings or ProbeSettings(**settings_kw)
    notes: tuple[str, ...] = ()
    if isinstance(contexts, Contexts):
        ctx = contexts
    elif contexts is None:
        ctx = spinup_contexts(m, sp, k, seed=st.seed)
        notes = ("contexts: data-free spin-up from noise (no contexts file given)",)
    else:
        ctx = select_contexts(read_record(contexts, sp, variables), m, sp, k)
    return run_sweep(m, sp, ctx, st, workers=workers, notes=notes, strategy=strategy)
