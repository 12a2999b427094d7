"""From scores to bits: a precision per tensor under a memory budget (multiple-choice knapsack).

Each tensor t of group g at precision p has a size bytes_t(p) and a residual r_t(p), both from the
weights alone (`edgetqs.core.quantize`, with the runtime's storage prices). With the TQS gain A_g, the
predicted trajectory error of a plan is

    E = sqrt( sum_g (A_g * r_g(p_g))^2 ),   r_g^2 = sum_{t in g} (n_t / n_g) r_t^2

so each tensor contributes A_g^2 (n_t/n_g) r_t(p_t)^2 and the problem is a multiple-choice
knapsack (`edgetqs.allocation.knapsack`): choose one precision per tensor, total bytes <= budget,
minimum summed cost. The published objective sum gamma_g * 2^-b is kept as ``--objective paper``.

Rules, in order of precedence, recorded per tensor: exact-name pin, regex pin (``re:``), group
that diverged under the probe (kept at the highest precision), dead group (lowest tier),
fp32 share (most sensitive groups kept at fp32), then the optimiser.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, ClassVar, Literal

import numpy as np
from pydantic import field_validator

from ..core.contexts import ContextsInfo
from ..core.model import Model
from ..core.quantize import FP32, Precision, effective, residual_rms
from ..core.results import Frozen, ResultFile, edgetqs_version
from ..core.weights import ExcludedTensor, excluded_tensors
from ..errors import BadInputError
from ..sensitivity.scores import GroupScore, Scores
from .knapsack import InfeasibleBudgetError, Item, solve_exact, solve_greedy
from .targets import Target

Objective = Literal["gain", "paper"]
ACTIVATIONS = ("auto", "float", "int8", "int16", "dynamic")
Allocator = Literal["exact", "greedy"]
MAX_BUDGET_BYTES = 2**50

_SIZE = re.compile(r"^\s*([0-9]*\.?[0-9]+)\s*([kmg]i?b?|b)?\s*$", re.IGNORECASE)
_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "m": 1000**2,
    "mb": 1000**2,
    "g": 1000**3,
    "gb": 1000**3,
    "ki": 1024,
    "kib": 1024,
    "mi": 1024**2,
    "mib": 1024**2,
    "gi": 1024**3,
    "gib": 1024**3,
}


def parse_reserve(text: str | int | None) -> int:
    """``--reserve``: a size as `parse_size` reads it, or 0 (None: 0), the bytes a plan leaves unspent.

    Raises:
        BadInputError: neither 0 nor a positive size."""
    return 0 if text is None or str(text).strip() == "0" else parse_size(str(text))


def parse_size(text: str) -> int:
    """'2MB' -> 2000000, '512KiB' -> 524288, '1234' -> 1234.

    Raises:
        BadInputError: not a positive number with an optional B/KB/MB/GB/KiB/MiB/GiB suffix.
    """
    m = _SIZE.match(str(text))
    unit = (m.group(2) or "").lower() if m else ""
    if not m or unit not in _UNITS:
        raise BadInputError(f"size '{text}'; expected bytes with an optional suffix, e.g. 150000, 600KB, 1.5MiB")
    n = int(min(float(m.group(1)) * _UNITS[unit], 2.0 * MAX_BUDGET_BYTES))  # 400 digits are inf as a float
    if not 0 < n <= MAX_BUDGET_BYTES:
        raise BadInputError(f"size '{text}'; expected a positive size up to 1 PiB")
    return n


def kib(n: float) -> str:
    return f"{n / 1024:,.1f} KiB"


class Pin(Frozen):
    """A user's rule: an exact tensor name or ``re:REGEX`` mapped to a precision."""

    pattern: str
    precision: Precision

    @property
    def is_regex(self) -> bool:
        return self.pattern.startswith("re:")

    def matches(self, name: str) -> bool:
        return bool(re.search(self.pattern[3:], name)) if self.is_regex else name == self.pattern

    def __str__(self) -> str:
        return f"{self.pattern}={self.precision.name}"


def parse_pin(text: str) -> Pin:
    """'l1.weight=fp16' or 're:^norm=fp32' -> Pin."""
    from ..core.quantize import parse_precision

    if "=" not in text:
        raise BadInputError(f"pin '{text}'; expected NAME=PRECISION or re:REGEX=PRECISION")
    pat, prec = text.rsplit("=", 1)
    pat = pat.strip()
    if not pat or pat == "re:":
        raise BadInputError(f"pin '{text}'; the name or regex before '=' is empty")
    if pat.startswith("re:"):
        try:
            re.compile(pat[3:])
        except re.error as exc:
            raise BadInputError(f"pin '{text}': bad regex ({exc})") from None
    return Pin(pattern=pat, precision=parse_precision(prec))


class PlanOptions(Frozen):
    """Everything besides scores, model and target that decides a plan (stored in plan.json)."""

    runtime: str | None = None  # default: the target's first runtime
    budget_bytes: int | None = None  # default: the target's weight budget
    ratio: float | None = None  # budget as a fraction of the fp32 size
    # bytes of the budget the plan leaves unspent, for what a converter adds on its own: a window centred for dynamic
    # range stores a level weight (`edgetqs.runtimes.centring`), and convert names the reserve it needs
    reserve_bytes: int = 0
    objective: Objective = "gain"
    allocator: Allocator = "exact"
    keep_fp32_share: float = 0.0
    lowest_bits: int | None = None
    pins: tuple[Pin, ...] = ()
    rounding: str = "rtn"  # rtn (round-to-nearest) or gptq: how the converters round each integer tensor
    activations: str = "auto"  # float | int8 | int16 | dynamic | auto (the target's preference for the runtime, [activations])
    exact_bytes: bool = True  # full-integer runtimes: price from the graph the converter writes (its tools; else estimated, noted)
    include: tuple[str, ...] = ()  # weight rules the model was read with (`edgetqs.core.weights`): the
    exclude: tuple[str, ...] = ()  # converters read it the same way

    @field_validator("pins", mode="before")
    @classmethod
    def _pins(cls, v: Any) -> Any:
        return tuple(parse_pin(p) if isinstance(p, str) else p for p in (v or ()))

    def check(self) -> None:
        """Raises BadInputError naming the first option out of range."""
        from .rounding import ROUNDINGS

        if self.budget_bytes is not None and self.ratio is not None:
            raise BadInputError("give a budget or a ratio, not both")
        if not (math.isfinite(self.keep_fp32_share) and 0.0 <= self.keep_fp32_share <= 1.0):
            raise BadInputError(f"fp32 share {self.keep_fp32_share}; expected a fraction between 0 and 1")
        if self.ratio is not None and not (math.isfinite(self.ratio) and 0.0 < self.ratio <= 1.0):
            raise BadInputError(f"ratio {self.ratio}; expected a fraction of the fp32 size in (0, 1]")
        if self.budget_bytes is not None and not 0 < self.budget_bytes <= MAX_BUDGET_BYTES:
            raise BadInputError(f"budget {self.budget_bytes} bytes; expected a positive size")
        if not 0 <= self.reserve_bytes <= MAX_BUDGET_BYTES:
            raise BadInputError(f"reserve {self.reserve_bytes} bytes; expected 0 or a positive size")
        if self.lowest_bits is not None and not 2 <= self.lowest_bits <= 32:
            raise BadInputError(f"lowest bits {self.lowest_bits}; expected 2..32")
        if self.rounding not in ROUNDINGS:
            raise BadInputError(f"rounding '{self.rounding}'; expected one of {', '.join(ROUNDINGS)}")
        if self.activations not in ACTIVATIONS:
            raise BadInputError(f"activations '{self.activations}'; expected one of {', '.join(ACTIVATIONS)}")


class Evaluation(Frozen):
    """A plan's measured error as stored in plan.json (``evaluation``)."""

    contexts: ContextsInfo
    horizon: int
    error_at_horizon: float | None  # mean over contexts of e_T (what the predicted error estimates); None: diverged
    first_nonfinite_step: int | None
    nrmse_by_lead: tuple[float | None, ...]
    nrmse_by_variable_at_horizon: dict[str, float | None]


class ParetoPoint(Frozen):
    """One budget of a Pareto front computed from the same scores."""

    budget_bytes: int
    weight_bytes: int
    bits_per_weight: float
    predicted_error: float | None
    measured_error: float | None = None  # simulated quantization, when --evaluate ran
    chosen: bool = False


class TensorPlan(Frozen):
    name: str
    group: str
    op: str
    n_params: int
    precision: Precision
    granularity: str | None
    bytes: int
    fp32_bytes: int
    residual: float
    error_share: float
    rule: str
    label: str = ""  # readable name (the exporter's module scope); '' when it is the name

    @property
    def display(self) -> str:
        """The readable name with the raw one beside it when they differ."""
        return f"{self.label} [{self.name}]" if self.label else self.name


class Plan(ResultFile):
    """The bit plan, written as ``plan.json``."""

    KIND: ClassVar[str] = "plan.json"
    COMMAND: ClassVar[str] = "edgetqs plan"
    SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = SCHEMA_VERSION
    model: str
    model_sha256: str
    target: str
    runtime: str
    objective: str
    allocator: str
    budget_bytes: int
    budget_source: str
    weight_bytes: int  # planned tensors + non-weight initializers
    fixed_bytes: int  # non-weight initializers (shapes, indices), stored as they are
    fp32_bytes: int  # the same model with every weight in fp32
    headroom_bytes: int
    min_feasible_bytes: int
    predicted_error: float | None  # sqrt(sum (A_g r_g)^2), normalised units at the score horizon; None: a
    # group whose probe diverged could not be kept exact on this runtime (unbounded prediction)
    paper_objective: float
    tensors: tuple[TensorPlan, ...]
    options: PlanOptions
    solve_seconds: float
    horizon: int
    notes: tuple[str, ...] = ()
    evaluation: Evaluation | None = None  # simulated-quantization rollout error, when --evaluate ran
    refinement: dict[str, Any] | None = None  # the search that chose this plan, when --refine ran
    pareto: tuple[ParetoPoint, ...] = ()  # plans at other budgets from the same scores, when --pareto ran
    calibration: dict[str, Any] | None = None  # contexts the rounding's integers come from (GPTQ): source, k, contexts_sha256
    activations: str | None = None  # float | int8 | int16 | dynamic: what the converters execute activations at (None: plans before 0.3)
    pricing: dict[str, Any] | None = None  # how bytes were priced: source, exact, notes (`edgetqs.runtimes.pricing`)
    excluded: tuple[ExcludedTensor, ...] = ()  # float initializers that are not weights: stored exactly (in fixed_bytes)

    @property
    def rounding(self) -> str:
        return self.options.rounding

    def precisions(self) -> dict[str, str]:
        return {t.name: t.precision.name for t in self.tensors}


# ------------------------------------------------------------------ the problem


def _bits(p: Precision) -> int:
    return p.bits


def build_items(scores: Scores, model: Model, target: Target, opts: PlanOptions, prune: bool = True) -> tuple[list[Item], str]:
    """Every weight tensor with its allowed precisions, sizes, residuals and costs.

    ``prune`` drops options the predicted cost dominates (as large and no better); a search that measures
    every option (`edgetqs.allocation.rescore`) keeps them all."""
    runtime = opts.runtime or target.runtimes[0]
    if runtime not in target.precisions:
        raise BadInputError(f"runtime '{runtime}' is not one of target '{target.name}' runtimes {list(target.precisions)}")
    pricing = pricing_of(model, target, opts)
    names = [w.name for w in model.weights]
    for p in opts.pins:
        if not any(p.matches(n) for n in names):
            raise BadInputError(
                f"pin '{p}' matches no weight tensor of the model (e.g. {', '.join(names[:3])}); check the name or the regex"
            )
    if scores.model_sha256 != model.sha256:
        raise BadInputError(
            f"scores were computed for model sha256 {scores.model_sha256[:12]}..., but '{model.path}' has {model.sha256[:12]}...; rescore or pass the right --model"
        )
    group_of = {t: g for g in scores.groups for t in g.tensors}
    missing = [w.name for w in model.weights if w.name not in group_of]
    if missing:
        raise BadInputError(
            f"weights {missing[:5]} are not in the scores (scored with different settings, or included after scoring?); "
            "rescore the model with the same --include/--exclude"
        )
    paper = paper_weights(scores) if opts.objective == "paper" else {}
    items = []
    for w in model.weights:
        g = group_of[w.name]
        arr = model.weight_array(w.name)
        layout = model.layout(w.name)
        allowed = target.allowed(runtime, model.op_type(w.name), model.role(w.name))
        pinned = [p for p in opts.pins if p.matches(w.name)]
        exact = [p for p in pinned if not p.is_regex]
        rule = "optimiser"
        if exact or pinned:
            pin = (exact or pinned)[0]
            choices = [pin.precision]
            rule = f"pin {pin.pattern}={pin.precision.name}" + (" (exact name)" if exact else " (regex)")
        else:
            choices = list(allowed)
            if opts.lowest_bits is not None:
                kept = [p for p in choices if _bits(p) >= opts.lowest_bits]
                if not kept:
                    raise BadInputError(
                        f"--lowest {opts.lowest_bits} bits leaves tensor '{w.name}' no precision among {[p.name for p in allowed]}"
                    )
                choices = kept
        # 1-D tensors turn channel/block into per-tensor: keep one entry per precision actually stored
        seen: dict[str, Precision] = {}
        for c in choices:
            e = effective(c, arr.shape, layout)
            seen.setdefault(e.name, e)
        opts_ = list(seen.values())
        opts_ = _narrow_constants(opts_, pricing.role(w.name), pricing.activations) if rule == "optimiser" else opts_
        if rule == "optimiser" and pricing.activations == "int8" and not pricing.slots and model.role(w.name) in ("Conv.bias", "Gemm.bias"):
            # an integer kernel's bias is int32 at x_scale * w_scale (`edgetqs.runtimes.ort_static`): planned as its fp32 values
            opts_ = [FP32]
        res = np.array([residual_rms(arr, p, layout) for p in opts_])
        if not np.isfinite(res).all():
            # e.g. fp16 of a pressure normaliser (~1e5 Pa > 65504): not a precision this tensor can have
            keep = [k for k in range(len(opts_)) if np.isfinite(res[k])]
            if not keep:
                raise BadInputError(f"tensor '{w.name}' cannot be stored at any of {[p.name for p in opts_]} (values overflow)")
            opts_, res = [opts_[k] for k in keep], res[keep]
        nb = np.array([pricing.option_bytes(w.name, arr.shape, p, layout) for p in opts_], dtype=np.int64)
        share = w.size / g.n_params if g.n_params else 1.0
        gain = math.inf if g.diverged_step is not None else (g.gain or 0.0)
        gains = [_ladder_gain(g, p, gain) for p in opts_]
        err = np.array([(a**2) * share * r * r if r > 0 else 0.0 for a, r in zip(gains, res)])
        if opts.objective == "paper":
            cost = np.array([paper[g.name] * share * 2.0 ** (-_bits(p)) for p in opts_])
        else:
            cost = err
        item = Item(w.name, g.name, w.size, opts_, nb, cost, err, res, rule)
        if rule == "optimiser":
            if g.diverged_step is not None:
                _fix(item, int(np.argmin(res)), f"diverged under the probe at step {g.diverged_step}: highest precision")
            elif g.dead:
                _fix(item, int(np.argmin(nb)), "dead group: lowest tier")
        items.append(item)
    _keep_fp32(items, scores, opts.keep_fp32_share)
    for it in items:
        _prune(it) if prune else _sort(it)
    return items, runtime


def resolve_activations(target: Target, runtime: str, asked: str) -> str:
    """The activation width a plan executes: the one asked for when the target offers it for ``runtime``,
    else (``auto``) the target's first (`[activations]`); float where the target lists none.

    Raises:
        BadInputError: a width the target does not offer for the runtime, with the ones it does.
    """
    from ..runtimes import RUNTIMES

    offered = list(target.activations.get(runtime, ()))
    if not offered:
        offered = ["int8"] if RUNTIMES.get(runtime).full_integer else ["float"]
    if asked == "auto":
        return offered[0]
    if asked not in offered:
        raise BadInputError(
            f"activations {asked}: target '{target.name}' offers {', '.join(offered)} for {runtime} "
            f"([activations] {runtime} in its file); use --activations {offered[0]}"
            + (
                f" or plan for another runtime of the target ({', '.join(r for r in target.runtimes if r != runtime)})"
                if len(target.runtimes) > 1
                else ""
            )
        )
    return asked


_PRICING: dict[tuple[Any, ...], Any] = {}


def pricing_of(model: Model, target: Target, opts: PlanOptions) -> Any:
    """How the runtime prices each weight and everything else (`edgetqs.runtimes.pricing.Pricing`), memoised per
    model, runtime, activations and exactness (an exact price converts the float graph once)."""
    from ..runtimes import RUNTIMES

    runtime = opts.runtime or target.runtimes[0]
    acts = resolve_activations(target, runtime, opts.activations)
    # the weight rules are part of the key: the same file read with other --include/--exclude rules has other
    # weights and other fixed bytes
    key = (model.sha256, model.include, model.exclude, runtime, acts, opts.exact_bytes, opts.activations == "auto")
    if key not in _PRICING:
        _PRICING[key] = RUNTIMES.get(runtime).pricing(model, acts, exact=opts.exact_bytes, auto=opts.activations == "auto")
    return _PRICING[key]


def _narrow_constants(options: list[Precision], role: str | None, activations: str) -> list[Precision]:
    """A full-integer file stores elementwise constants at the activation width: under int8 activations an
    int16 option would be priced and simulated wider than what is stored, so it goes (int8 remains)."""
    if role != "const" or activations not in ("int8", "int16"):
        return options
    width = 8 if activations == "int8" else 16
    kept = [p for p in options if p.kind == "int" and p.bits <= width]
    return kept or options


def paper_weights(scores: Scores) -> dict[str, float]:
    """Each group's weight in the published objective sum_g w_g 2^-b_g: the rank of its gamma, scaled to (0, 1].

    The objective needs positive weights (a negative gamma would make fewer bits look *better*: the MILP then
    sends normalisers with a negative gamma to int2). Gammas are log-rates whose zero depends on the
    perturbation's units, so only their order compares across groups: the rank keeps the order and nothing
    else. Dead groups weigh least (1 / (2 n)), groups whose probe diverged infinitely."""
    live = sorted((g.gamma, g.name) for g in scores.groups if g.gamma is not None)
    n = max(len(live), 1)
    w = {name: (i + 1) / n for i, (_, name) in enumerate(live)}
    for g in scores.groups:
        if g.name not in w:
            w[g.name] = math.inf if g.diverged_step is not None else 1.0 / (2 * n)
    return w


def _ladder_gain(g: GroupScore, p: Precision, default: float) -> float:
    """The gain that prices ``g`` at precision ``p``: the quant probe's at p's bit-width when the
    scores have a ladder (--ladder), else the one gain of the main probe."""
    ladder = g.gain_by_bits
    if not ladder or p.kind != "int" or p.bits >= 32:
        return default
    if str(p.bits) in ladder:
        v = ladder[str(p.bits)]
        return math.inf if v is None else v
    measured = sorted(int(b) for b in ladder)
    below = [b for b in measured if b < p.bits]
    above = [b for b in measured if b > p.bits]
    if not below or not above:  # outside the ladder: the nearest measured width
        b = min(measured, key=lambda x: abs(x - p.bits))
        v = ladder[str(b)]
        return math.inf if v is None else v
    lo, hi = below[-1], above[0]
    a, c = ladder[str(lo)], ladder[str(hi)]
    if a is None or c is None:  # a rollout at one of the neighbouring widths diverged
        return math.inf
    w = (p.bits - lo) / (hi - lo)  # geometric interpolation between the neighbouring widths
    return float(math.exp((1 - w) * math.log(max(a, 1e-30)) + w * math.log(max(c, 1e-30))))


def _fix(item: Item, k: int, rule: str) -> None:
    item.options, item.bytes, item.cost = [item.options[k]], item.bytes[k : k + 1], item.cost[k : k + 1]
    item.err, item.residual, item.rule = item.err[k : k + 1], item.residual[k : k + 1], rule


def _keep_fp32(items: list[Item], scores: Scores, share: float) -> None:
    """Keep the most sensitive groups in fp32 until ``share`` of the parameters is covered."""
    if share <= 0:
        return
    total = sum(it.n for it in items)
    kept = 0
    by_group: dict[str, list[Item]] = {}
    for it in items:
        by_group.setdefault(it.group, []).append(it)
    for g in scores.ranked():
        if kept >= share * total:
            break
        for it in by_group.get(g.name, []):
            if it.rule == "optimiser":
                fp = [k for k, p in enumerate(it.options) if p == FP32]
                k = fp[0] if fp else int(np.argmin(it.residual))
                _fix(it, k, f"fp32 share {share:g}: among the most sensitive groups")
            kept += it.n


def _sort(item: Item) -> None:
    """Order options by bytes (then cost), keeping one per byte size."""
    order = sorted(range(len(item.options)), key=lambda k: (item.bytes[k], item.cost[k]))
    keep = [k for i, k in enumerate(order) if i == 0 or item.bytes[k] != item.bytes[order[i - 1]]]
    item.options = [item.options[k] for k in keep]
    item.bytes, item.cost, item.err, item.residual = item.bytes[keep], item.cost[keep], item.err[keep], item.residual[keep]


def _prune(item: Item) -> None:
    """Drop dominated options (as large or larger and no better), order by bytes."""
    order = sorted(range(len(item.options)), key=lambda k: (item.bytes[k], item.cost[k]))
    keep: list[int] = []
    best = math.inf
    for k in order:
        if item.cost[k] < best - 1e-300 or not keep:
            if keep and item.bytes[k] == item.bytes[keep[-1]]:
                continue
            keep.append(k)
            best = item.cost[k]
    item.options = [item.options[k] for k in keep]
    item.bytes, item.cost, item.err, item.residual = item.bytes[keep], item.cost[keep], item.err[keep], item.residual[keep]


# ------------------------------------------------------------------ the plan


def _sizes(model: Model, pricing: Any = None) -> tuple[int, int]:
    """(bytes of everything that is not a weight, as the runtime stores it; the fp32 model's bytes)."""
    fixed = model.fixed_bytes if pricing is None else pricing.fixed_bytes(model)
    fp32 = model.fixed_bytes + sum(w.size * 4 for w in model.weights)
    return fixed, fp32


def budget_of(model: Model, target: Target, opts: PlanOptions) -> tuple[int, str]:
    """(weight budget in bytes, where it came from): --budget, else --ratio of fp32, else the target's."""
    _, fp32 = _sizes(model)
    if opts.budget_bytes is not None:
        return opts.budget_bytes, "--budget"
    if opts.ratio is not None:
        return int(opts.ratio * fp32), f"--ratio {opts.ratio:g} of fp32"
    return target.weight_budget_bytes, f"target {target.name}"


def feasible(
    model: Model, target: Target, items: list[Item], runtime: str, budget: int, source: str, fixed: int | None = None, reserve: int = 0
) -> int:
    """The smallest feasible size; raises InfeasibleBudgetError (naming it) when the budget less ``reserve`` (the
    bytes the plan must leave unspent) is below it."""
    fixed = model.fixed_bytes if fixed is None else fixed
    min_bytes = fixed + int(sum(it.bytes.min() for it in items))
    if min_bytes > budget - reserve:
        kept = f", less the {reserve:,} bytes --reserve keeps unspent," if reserve else ""
        raise InfeasibleBudgetError(
            f"budget {budget:,} bytes ({kib(budget)}, from {source}){kept} is below the smallest feasible size "
            f"{min_bytes:,} bytes ({kib(min_bytes)}) for {runtime} on {target.name} with these options; "
            f"raise the budget to at least {min_bytes + reserve} bytes, "
            + ("lower --reserve, " if reserve else "")
            + "allow lower precisions or relax pins"
        )
    return min_bytes


def make_plan(scores: Scores, model: Model, target: Target, opts: PlanOptions | None = None) -> Plan:
    """Allocate a precision to every weight tensor.

    Raises:
        InfeasibleBudgetError: the budget is below the smallest feasible size (given in the message).
        BadInputError: scores of another model, bad options, pins the target cannot execute.
    """
    opts = opts or PlanOptions()
    opts.check()
    t0 = time.perf_counter()
    items, runtime = build_items(scores, model, target, opts)
    fixed = _sizes(model, pricing_of(model, target, opts))[0]
    budget, source = budget_of(model, target, opts)
    min_bytes = feasible(model, target, items, runtime, budget, source, fixed, opts.reserve_bytes)
    free = budget - opts.reserve_bytes - fixed
    if sum(int(it.bytes[-1]) for it in items) <= free:
        # everything fits at its largest (least-error) option: that is the optimum, and asking the
        # MILP would let costs below its tolerances (~1e-12) pass for zero
        choice = [len(it.options) - 1 for it in items]
    else:
        choice = solve_exact(items, free) if opts.allocator == "exact" else solve_greedy(items, free)
    return plan_from_choice(
        scores,
        model,
        target,
        opts.model_copy(update={"runtime": runtime}),
        items,
        choice,
        budget,
        source,
        min_bytes,
        time.perf_counter() - t0,
    )


def plan_from_choice(
    scores: Scores,
    model: Model,
    target: Target,
    opts: PlanOptions,
    items: list[Item],
    choice: list[int],
    budget: int,
    source: str,
    min_bytes: int,
    seconds: float,
) -> Plan:
    """The `Plan` for one option per item (``choice`` indexes each item's options).

    A weight's per-channel option carries its biases' per-channel parameters in the knapsack (`Pricing.coupled`);
    once chosen they move back to the bias (or to the fixed bytes, for a bias that is no weight of the plan)."""
    pricing = pricing_of(model, target, opts)
    fixed, fp32 = _sizes(model, pricing)
    moved: dict[str, int] = {}
    for it, c in zip(items, choice):
        if pricing.per_channel(it.name, it.options[c]):
            for bias, extra in pricing.coupled.get(it.name, []):
                moved[it.name] = moved.get(it.name, 0) - extra
                if bias is None:
                    fixed += extra
                else:
                    moved[bias] = moved.get(bias, 0) + extra
    errs = np.array([it.err[c] for it, c in zip(items, choice)])
    total_err = float(errs.sum())
    paper = 0.0
    weight_of = paper_weights(scores)
    group_n = {g.name: g.n_params for g in scores.groups}
    tensors = []
    for it, c in zip(items, choice):
        p = it.options[c]
        if math.isfinite(weight_of.get(it.group, 0.0)):
            paper += weight_of.get(it.group, 0.0) * (it.n / max(1, group_n[it.group])) * 2.0 ** (-p.bits)
        share = float(it.err[c] / total_err) if total_err > 0 and math.isfinite(total_err) else 0.0
        tensors.append(
            TensorPlan(
                name=it.name,
                group=it.group,
                op=model.role(it.name),
                n_params=it.n,
                precision=p,
                granularity=p.granularity,
                bytes=int(it.bytes[c]) + moved.get(it.name, 0),
                fp32_bytes=it.n * 4,
                residual=float(it.residual[c]),
                error_share=share,
                rule=it.rule,
                label=model.label(it.name) if model.label(it.name) != it.name else "",
            )
        )
    weight_bytes = fixed + sum(t.bytes for t in tensors)
    notes = tuple(pricing.notes)
    if not pricing.exact and pricing.slots is not None:
        notes += (
            f"bytes priced {pricing.source}: the converter's read-back may differ; plan with exact bytes (edgetqs plan, build) to price what it stores",
        )
    return Plan(
        edgetqs_version=edgetqs_version(),
        model=scores.model,
        model_sha256=scores.model_sha256,
        target=target.name,
        runtime=opts.runtime or target.runtimes[0],
        objective=opts.objective,
        allocator=opts.allocator,
        budget_bytes=budget,
        budget_source=source,
        weight_bytes=weight_bytes,
        fixed_bytes=fixed,
        fp32_bytes=fp32,
        headroom_bytes=budget - weight_bytes,
        min_feasible_bytes=min_bytes,
        predicted_error=math.sqrt(total_err) if math.isfinite(total_err) else None,
        paper_objective=paper,
        tensors=tuple(tensors),
        options=opts,
        solve_seconds=seconds,
        horizon=scores.horizon,
        notes=notes,
        activations=pricing.activations,
        pricing=pricing.record(),
        excluded=excluded_tensors(model),
    )


def pareto(scores: Scores, model: Model, target: Target, opts: PlanOptions, n: int) -> list[Plan]:
    """``n`` plans at budgets spread evenly between the smallest feasible size and fp32 (the front of the weights alone:
    no bytes reserved)."""
    if not 2 <= n <= 1000:
        raise BadInputError(f"--pareto {n}; expected 2 to 1000 budgets")
    items, _ = build_items(scores, model, target, opts)
    fixed, _ = _sizes(model, pricing_of(model, target, opts))
    lo = fixed + int(sum(it.bytes.min() for it in items))
    hi = fixed + int(sum(it.bytes.max() for it in items))
    budgets = np.unique(np.linspace(lo, hi, n).astype(int))
    return [
        make_plan(scores, model, target, opts.model_copy(update={"budget_bytes": int(b), "ratio": None, "reserve_bytes": 0}))
        for b in budgets
    ]
