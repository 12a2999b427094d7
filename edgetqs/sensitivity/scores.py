"""What a TQS sweep produces (``scores.json``) and the settings it depends on."""

from __future__ import annotations

import math
from typing import Any, ClassVar, Literal

from ..core.contexts import ContextsInfo
from ..core.project import ScoreConfig
from ..core.results import Frozen, ResultFile
from ..core.rollout import RolloutSpec
from ..core.weights import ExcludedTensor
from ..errors import BadInputError

DEAD_GAMMA = -50.0
MAX_HORIZON_CAP = 10_000  # steps: a sweep's cost grows with T; nothing a forecaster is deployed for needs more


def parse_horizon(value: int | str | None) -> int | None:
    """``auto`` -> None (see `choose_horizon`); an integer or its text -> that many steps."""
    if value is None or value == "auto":
        return None
    if isinstance(value, bool):
        raise BadInputError(f"horizon {value!r}; expected a positive integer or 'auto'")
    try:
        return int(value)
    except (TypeError, ValueError):
        raise BadInputError(f"horizon '{value}'; expected a positive integer or 'auto'") from None


def parse_ladder(value: str | tuple[int, ...] | list[int] | None) -> tuple[int, ...]:
    if not value:
        return ()
    try:
        return tuple(int(x) for x in (value.split(",") if isinstance(value, str) else value))
    except ValueError:
        raise BadInputError(f"ladder '{value}'; expected bit-widths such as 2,3,4,5,6,8") from None


class ProbeSettings(Frozen):
    """Everything the score depends on besides the model and the contexts.

    Attributes:
        probe: a registered probe (`edgetqs.sensitivity.probes`): ``gauss`` (d ~ N(0, (scale * rms(W))^2)
            per tensor) or ``quant`` (d = Q_b(W) - W).
        scale: relative size of the gauss probe.
        bits: bit-width of the quant probe (round-to-nearest, symmetric, per output channel).
        granularity: one group per tensor, or per block of tensors sharing a name prefix.
        block_depth: name components that make a block (None: the parent, i.e. all but the last).
        horizon: rollout steps T, or None for ``auto`` (see `choose_horizon`).
        max_horizon: upper bound for ``auto``.
        seed: seeds every probe (per group, independent of order and workers).
        state_scale: relative size of the initial-state perturbation for the model's own exponent.
        ladder: also measure the quant probe's gain at each of these bit-widths.
        eps: gamma's initial separation: the perturbation's size relative to the weights' (``relative``:
            eps / rms(W), so groups in different units compare) or in weight units (``absolute``, as
            first published: a group of large weights, a pressure normaliser near 1e3, then scores low for
            that reason alone). The gain A_g, which the planner uses, is per unit of weight error either way.
        include, exclude: the user's weight rules (exact name or ``re:REGEX``; `edgetqs.core.weights`): which
            float initializers are weight groups besides (or instead of) what the constant rules decide.
    """

    probe: str = "gauss"
    scale: float = 1e-3
    bits: int = 4
    granularity: str = "tensor"
    block_depth: int | None = None
    horizon: int | None = 20
    max_horizon: int = 64
    seed: int = 0
    state_scale: float = 1e-3
    ladder: tuple[int, ...] = ()
    eps: Literal["relative", "absolute"] = "relative"
    include: tuple[str, ...] = ()
    exclude: tuple[str, ...] = ()

    @classmethod
    def from_config(cls, cfg: ScoreConfig | dict[str, Any] | None) -> ProbeSettings:
        """Settings from a (merged) ``[score]`` table: ``horizon`` may be ``auto``, an integer or its text;
        ``ladder`` a list or ``"2,3,4"``. ``workers`` is not a probe setting and is ignored here."""
        d = cfg.model_dump() if isinstance(cfg, ScoreConfig) else dict(cfg or {})
        kw: dict[str, Any] = {
            k: d[k]
            for k in ("probe", "granularity", "block_depth", "max_horizon", "scale", "bits", "seed", "state_scale", "eps")
            if d.get(k) is not None
        }
        if "horizon" in d and d["horizon"] is not None:
            kw["horizon"] = parse_horizon(d["horizon"])
        if d.get("ladder"):
            kw["ladder"] = parse_ladder(d["ladder"])
        for key in ("include", "exclude"):
            if d.get(key):
                kw[key] = tuple(d[key])
        try:
            s = cls(**kw)
        except Exception as exc:  # noqa: BLE001 - pydantic's type errors, e.g. a text seed
            raise BadInputError(f"score settings {kw}: {exc}") from None
        s.check()
        return s

    def check(self) -> None:
        """Raises BadInputError naming the first setting out of range."""
        from .groups import GRANULARITIES
        from .probes import PROBES

        if self.probe not in PROBES:
            raise BadInputError(f"probe '{self.probe}'; expected one of {', '.join(PROBES.names())}")
        if self.granularity not in GRANULARITIES:
            raise BadInputError(f"granularity '{self.granularity}'; expected one of {', '.join(GRANULARITIES)}")
        if self.horizon is not None and not 1 <= self.horizon <= MAX_HORIZON_CAP:
            raise BadInputError(f"horizon {self.horizon}; expected a number of steps from 1 to {MAX_HORIZON_CAP:,} or 'auto'")
        if not 1 <= self.max_horizon <= MAX_HORIZON_CAP:
            raise BadInputError(f"max horizon {self.max_horizon}; expected a number of steps from 1 to {MAX_HORIZON_CAP:,}")
        if not 2 <= self.bits <= 8:
            raise BadInputError(f"quant probe bits {self.bits}; expected 2..8")
        bad = [b for b in self.ladder if not 2 <= int(b) <= 8]
        if bad:
            raise BadInputError(f"ladder bit-widths {bad}; expected 2..8")
        for name, v in (("gauss probe scale", self.scale), ("state perturbation scale", self.state_scale)):
            if not (math.isfinite(v) and 0 < v <= 1):
                raise BadInputError(f"{name} {v}; expected a relative size in (0, 1], e.g. 1e-3")
        if self.block_depth is not None and self.block_depth < 1:
            raise BadInputError(f"block depth {self.block_depth}; expected >= 1")
        if self.seed < 0:
            raise BadInputError(f"seed {self.seed}; expected a non-negative integer")
        from ..core.weights import check_rules

        check_rules(self.include, "--include")
        check_rules(self.exclude, "--exclude")


class GroupScore(Frozen):
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
    weight_rms: float = 1.0  # rms of the group's weights (relative eps: gamma's separation is eps / weight_rms)
    label: str = ""  # readable name (the exporter's module scope, `edgetqs.core.weights.readable`); '' when it is the name

    @property
    def display(self) -> str:
        """The readable name with the raw one beside it when they differ: ``block.q (MatMul n) weight [val_17]``."""
        return f"{self.label} [{self.name}]" if self.label else self.name

    @property
    def sort_key(self) -> float:
        if self.diverged_step is not None:
            return math.inf
        if self.dead or self.gamma is None:
            return -math.inf
        return self.gamma


class StateExponent(Frozen):
    """The model's own finite-time exponent: initial state perturbed, weights untouched."""

    exponent: float | None
    curve: tuple[float | None, ...]
    eps: float
    error_curve: tuple[float, ...]  # mean over contexts of e_t, normalised units


class Scores(ResultFile):
    """The result of a sweep, written as ``scores.json``."""

    KIND: ClassVar[str] = "scores.json"
    COMMAND: ClassVar[str] = "edgetqs score"
    SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = SCHEMA_VERSION
    model: str
    model_sha256: str
    model_path: str = ""
    rollout: RolloutSpec
    settings: ProbeSettings
    horizon: int
    horizon_rule: str
    contexts: ContextsInfo
    contexts_sha256: str = ""
    state_exponent: StateExponent
    groups: tuple[GroupScore, ...]
    wall_seconds: float
    forward_calls: int
    workers: int
    strategy: str = "feed"
    notes: tuple[str, ...] = ()
    excluded: tuple[ExcludedTensor, ...] = ()  # float initializers that are not weights, with the reason

    @property
    def spec(self) -> RolloutSpec:
        return self.rollout

    def ranked(self) -> list[GroupScore]:
        """Most sensitive first: diverged groups, then by gamma, dead groups last."""
        return sorted(self.groups, key=lambda g: g.sort_key, reverse=True)
