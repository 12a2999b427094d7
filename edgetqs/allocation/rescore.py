"""In-context re-scoring: refine a plan by measuring each tensor's damage with the rest of the plan quantized.

The sweep scores each group alone, and the knapsack adds those damages as if they were independent. At 2-5
bits per weight they are not: errors of many groups interact and saturate, so the additive optimum can push a
few tensors so low that the rollout suffers more than predicted. Re-scoring measures instead:

1. start from the best (measured) of the plans the same sweep gives: the gauss-gain plan, the published
   objective's plan (ranked gammas), and the ladder plan when the scores hold quant-probe gains per bit-width;
2. for every tensor and each precision near its current one (``reach`` steps up or down its menu), roll the
   model out with that one tensor changed and everything else as planned: the marginal damage
   D_t(p) = e(t -> p)^2 - e^2 in the context of the whole plan;
3. re-solve the multiple-choice knapsack on these measured costs (`edgetqs.allocation.knapsack`) and measure
   the result; if it is not better, try the best feasible single moves and upgrade/downgrade pairs;
4. accept a step only if it lowers the error on the search contexts AND on a slice of the scoring contexts
   held back from the search (against overfitting to a few contexts); stop when nothing improves, after
   ``max_rounds`` rounds, or when the rollout budget is spent.

Every rollout is the plan's simulated quantization (the values the runtime computes with, its rounding
included), batched over contexts on one onnxruntime session whose weights are fed as inputs. The error is the
normalised RMSE at the horizon over contexts and variables (`edgetqs.core.metrics`), the quantity the
benchmark and the check report. What the search cost (rollouts, seconds) and why it stopped go into plan.json.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..core.contexts import Contexts
from ..core.metrics import divergence, inverse_spread
from ..core.model import Model
from ..core.results import Frozen
from ..core.rollout import Rollout, RolloutSpec
from ..sensitivity.scores import Scores
from .knapsack import InfeasibleBudgetError, Item, solve_exact
from .plan import Plan, PlanOptions, _sizes, budget_of, build_items, feasible, make_plan, plan_from_choice, pricing_of
from .targets import Target


class RescoreSettings(Frozen):
    """How hard the search works."""

    max_rounds: int = 4
    rollout_budget: int = 400  # rollouts of the search contexts (one rollout = T steps of K contexts, batched)
    seconds_budget: float | None = None  # wall-clock limit, checked between rollouts
    reach: int = 2  # precisions measured per tensor: this many steps up and down its menu from the current one
    guard_share: float = 0.25  # share of the scoring contexts held back to accept a step (at least one context)
    contexts: int = 32  # contexts drawn from the scoring span for the search when the record allows (8 overfit)
    pair_trials: int = 6  # single moves and upgrade/downgrade pairs measured besides the re-solved plans
    guard_trials: int = 3  # improving candidates tried on the guard contexts, best first, before the search stops
    threads: int = 0  # intra-op threads of the search's session (0: onnxruntime's default; 1 where processes share the cores)


MAX_ROLLOUT_BUDGET = 1_000_000


def search_settings(rollouts: int) -> RescoreSettings:
    """The search's settings for a rollout budget from the user (``--refine-rollouts``), checked.

    Raises:
        BadInputError: a budget outside 1 to 1,000,000 rollouts.
    """
    from ..errors import BadInputError

    if not 1 <= rollouts <= MAX_ROLLOUT_BUDGET:
        raise BadInputError(f"--refine-rollouts {rollouts}; expected 1 to {MAX_ROLLOUT_BUDGET:,} rollouts")
    return RescoreSettings(rollout_budget=rollouts)


class Step(Frozen):
    round: int
    kind: str  # start | resolve | single | pair
    search_error: float | None
    guard_error: float | None
    weight_bytes: int
    accepted: bool
    note: str = ""


class Rescoring(Frozen):
    """What the search did (stored in plan.json ``refinement``)."""

    method: str = "in-context re-scoring"
    start: str
    rounds: int
    rollouts: int
    seconds: float
    search_contexts: int
    guard_contexts: int
    stopped: str
    steps: tuple[Step, ...]


class _Budget:
    def __init__(self, s: RescoreSettings) -> None:
        self.s, self.rollouts, self.t0 = s, 0, time.perf_counter()

    def left(self) -> int:
        return self.s.rollout_budget - self.rollouts

    def spent(self) -> bool:
        if self.rollouts >= self.s.rollout_budget:
            return True
        return self.s.seconds_budget is not None and time.perf_counter() - self.t0 > self.s.seconds_budget


@dataclass
class _Evaluator:
    """Measures the error of a full set of weights on the search or the guard contexts."""

    model: Model
    spec: RolloutSpec
    contexts: Contexts
    search: np.ndarray  # context indices
    guard: np.ndarray
    horizon: int
    budget: _Budget
    threads: int = 0
    roll: Rollout = field(init=False)
    refs: dict[str, list[np.ndarray]] = field(init=False)
    invs: dict[str, list[np.ndarray]] = field(init=False)

    def __post_init__(self) -> None:
        # weights fed as inputs: one session for the search
        self.roll = Rollout(self.model, self.spec, self.contexts.statics, threads=self.threads, forcings=self.contexts.forcing_arrays)
        float_feed = {w.name: self.model.weight_array(w.name) for w in self.model.weights}
        self.refs, self.invs = {}, {}
        for part, idx in (("search", self.search), ("guard", self.guard)):
            steps = self.roll.run([a[idx] for a in self.contexts.arrays], self.horizon, overrides=float_feed, rows=idx).steps
            self.refs[part] = steps
            self.invs[part] = [
                inverse_spread(sp, self.spec.mode, self.spec.channel_axis, st.ndim) for sp, st in zip(self.contexts.spreads, steps)
            ]

    def error(self, weights: dict[str, np.ndarray], part: str = "search") -> float:
        idx = self.search if part == "search" else self.guard
        res = self.roll.run([a[idx] for a in self.contexts.arrays], self.horizon, overrides=weights, rows=idx)
        self.budget.rollouts += 1 if part == "search" else 0
        if res.first_nonfinite is not None:
            return math.inf
        e = divergence(res.steps, self.refs[part], self.invs[part])[-1]  # e_T per context
        return float(np.sqrt(np.mean(np.square(e))))


def _split(k: int, share: float) -> tuple[np.ndarray, np.ndarray]:
    """Every n-th scoring context is held back as the guard (deterministic, spread over the record)."""
    n_guard = max(1, round(k * share)) if k >= 2 else 0
    if n_guard == 0:
        return np.arange(k), np.arange(k)
    guard = np.unique(np.round(np.linspace(0, k - 1, n_guard)).astype(int))
    search = np.setdiff1d(np.arange(k), guard)
    return search, guard


def _choice_of(plan: Plan, items: list[Item]) -> list[int]:
    by = {t.name: t.precision.name for t in plan.tensors}
    out = []
    for it in items:
        names = [p.name for p in it.options]
        out.append(names.index(by[it.name]) if by[it.name] in names else len(names) - 1)
    return out


def rescore(
    scores: Scores,
    model: Model,
    target: Target,
    opts: PlanOptions,
    spec: RolloutSpec,
    contexts: Contexts,
    ladder: Scores | None = None,
    settings: RescoreSettings | None = None,
    log: Any = None,
) -> Plan:
    """The re-scored plan for ``opts``' budget (see the module docstring).

    Args:
        scores: the sweep's scores (gauss probe).
        ladder: scores with quant-probe gains per bit-width (``--ladder``), when available: their plan is
            a second starting point.
        contexts: the scoring contexts (the guard slice is taken from them).

    Raises:
        InfeasibleBudgetError: the budget is below the smallest feasible size.
    """
    from .rounding import Rounder

    s = settings or RescoreSettings()
    t0 = time.perf_counter()
    opts = opts.model_copy(update={"runtime": opts.runtime or target.runtimes[0]})
    items, runtime = build_items(scores, model, target, opts, prune=False)
    fixed = _sizes(model, pricing_of(model, target, opts))[0]
    budget, source = budget_of(model, target, opts)
    min_bytes = feasible(model, target, items, runtime, budget, source, fixed, opts.reserve_bytes)
    free = budget - opts.reserve_bytes - fixed
    budget_state = _Budget(s)
    search, guard = _split(contexts.k, s.guard_share)
    ev = _Evaluator(model, spec, contexts, search, guard, scores.horizon, budget_state, s.threads)

    # the values each option computes with (the plan's rounding), made once
    rounder = Rounder(model, opts.rounding, contexts, spec, scores.horizon)
    options_values: dict[tuple[int, int], np.ndarray] = {}

    def value(i: int, k: int) -> np.ndarray:
        if (i, k) not in options_values:
            options_values[(i, k)] = rounder.values(items[i].name, items[i].options[k])
        return options_values[(i, k)]

    # every plan the same sweep gives is a starting point; the best measured one is refined
    starts = [("gauss", make_plan(scores, model, target, opts))]
    if ladder is not None and any(g.gain_by_bits for g in ladder.groups):
        starts.append(("ladder", make_plan(ladder, model, target, opts)))
    if opts.objective != "paper":
        starts.append(("paper objective", make_plan(scores, model, target, opts.model_copy(update={"objective": "paper"}))))
    steps: list[Step] = []
    best: tuple[float, str, list[int]] | None = None
    for label, p in starts:
        choice = _choice_of(p, items)
        e = ev.error({items[i].name: value(i, k) for i, k in enumerate(choice)})
        steps.append(
            Step(round=0, kind="start", search_error=_fin(e), guard_error=None, weight_bytes=p.weight_bytes, accepted=False, note=label)
        )
        if best is None or e < best[0]:
            best = (e, label, choice)
    assert best is not None
    e_cur, start, cur = best
    g_cur = ev.error({items[i].name: value(i, k) for i, k in enumerate(cur)}, "guard")
    stopped, rounds = "no step improved the plan", 0
    for rnd in range(1, s.max_rounds + 1):
        if budget_state.spent():
            stopped = "rollout budget spent"
            break
        rounds = rnd
        cur_w = {items[i].name: value(i, k) for i, k in enumerate(cur)}
        # 2. marginal damage of nearby precisions, everything else as planned: breadth-first (every tensor's
        # nearest precisions, then the next ones) and keeping rollouts for this round's candidate steps, so that a
        # budget smaller than a whole round (a model of many tensors) still ends in a measured step, not in
        # measurements alone
        measured: dict[tuple[int, int], float] = {}
        reserve = min(_CANDIDATE_ROLLOUTS + s.pair_trials, budget_state.left() // 2)
        for k, i in _neighbours(items, cur, s.reach):
            if budget_state.spent() or budget_state.left() <= reserve:
                break
            w = dict(cur_w)
            w[items[i].name] = value(i, k)
            measured[(i, k)] = ev.error(w)
        if not measured:
            stopped = "rollout budget spent" if budget_state.spent() else "nothing to measure"
            break
        # 3. candidate steps: the re-solved plan (unconstrained, then within a trust region of a few changes),
        # the best feasible single moves and upgrade/downgrade pairs; measured, best first
        cands = _candidates(items, cur, measured, e_cur, free, s.pair_trials)
        tried: list[tuple[float, str, list[int], str]] = []
        for kind, new, note in cands:
            if budget_state.spent():
                break
            if any(c[2] == new for c in tried):
                continue
            # a single move was measured already, as its marginal damage
            e = measured[_single(cur, new)] if kind == "single" else ev.error({items[i].name: value(i, k) for i, k in enumerate(new)})
            tried.append((e, kind, new, note))
        improving = sorted((c for c in tried if c[0] < e_cur), key=lambda c: c[0])
        accepted = None
        for e, kind, new, note in improving[: s.guard_trials]:
            g = ev.error({items[i].name: value(i, k) for i, k in enumerate(new)}, "guard")
            ok = g < g_cur
            nbytes = int(sum(items[i].bytes[k] for i, k in enumerate(new)))
            steps.append(
                Step(
                    round=rnd,
                    kind=kind,
                    search_error=_fin(e),
                    guard_error=_fin(g),
                    weight_bytes=nbytes,
                    accepted=ok,
                    note=note if ok else (note + "; " if note else "") + "rejected by the guard contexts",
                )
            )
            if ok:
                accepted = (new, e, g)
                break
        if accepted is None:
            stopped = (
                "no candidate improved the search contexts"
                if not improving
                else "no candidate that improved the search contexts also improved the held-back guard contexts"
            )
            break
        cur, e_cur, g_cur = accepted
    else:
        stopped = f"{s.max_rounds} rounds"
    info = Rescoring(
        start=start,
        rounds=rounds,
        rollouts=budget_state.rollouts,
        seconds=time.perf_counter() - t0,
        search_contexts=len(search),
        guard_contexts=len(guard),
        stopped=stopped,
        steps=tuple(steps),
    )
    first = _choice_of(dict(starts)[start], items)
    for i, k in enumerate(cur):
        if k != first[i] and items[i].rule == "optimiser":
            items[i].rule = "re-scored in context"
    plan = plan_from_choice(scores, model, target, opts, items, cur, budget, source, min_bytes, time.perf_counter() - t0)
    note = (
        f"re-scored in context from the {start} plan: search error {_fmt(steps[0].search_error)} -> {_fmt(e_cur)} in {rounds} round(s), "
        f"{budget_state.rollouts} rollouts, {info.seconds:.1f} s ({stopped})"
    )
    if log:
        log(note)
    return plan.model_copy(update={"refinement": info.model_dump(mode="json"), "notes": (*plan.notes, note)})


_CANDIDATE_ROLLOUTS = 4  # re-solved plans measured per round (free, then at most 4, 2 and 1 changes); pairs come on top


def _neighbours(items: list[Item], cur: list[int], reach: int) -> list[tuple[int, int]]:
    """(option, item) to measure around the current choice, breadth-first: one step down and up every item's menu,
    then two steps, up to ``reach``; at each distance the items holding the most bytes first (where a budget cut
    short leaves some unmeasured, the ones whose moves shift the most bytes were measured)."""
    by_size = sorted(range(len(items)), key=lambda i: (-int(items[i].bytes[cur[i]]), i))
    out = []
    for d in range(1, reach + 1):
        for i in by_size:
            out += [(k, i) for k in (cur[i] - d, cur[i] + d) if 0 <= k < len(items[i].options)]
    return out


def _single(cur: list[int], new: list[int]) -> tuple[int, int]:
    i = next(i for i, (a, b) in enumerate(zip(cur, new)) if a != b)
    return (i, new[i])


def _candidates(
    items: list[Item], cur: list[int], measured: dict[tuple[int, int], float], e_cur: float, free: int, pair_trials: int
) -> list[tuple[str, list[int], str]]:
    """Steps worth measuring, most promising first: the knapsack re-solved on the measured costs (free, then
    with at most 4, 2 and 1 tensors changed: the measured damages add up less well the more change at once),
    the feasible single moves that measured better, and upgrade/downgrade pairs predicted to help."""
    sub: list[Item] = []
    maps: list[list[int]] = []
    for i, it in enumerate(items):
        ks = sorted({cur[i], *(k for (j, k) in measured if j == i)})
        cost = np.array([0.0 if k == cur[i] else _delta(measured[(i, k)], e_cur) for k in ks])
        sub.append(Item(it.name, it.group, it.n, [it.options[k] for k in ks], it.bytes[ks], cost, cost, it.residual[ks]))
        maps.append(ks)
    sub_cur = [maps[i].index(cur[i]) for i in range(len(items))]
    out: list[tuple[str, list[int], str]] = []
    for limit in (None, 4, 2, 1):
        try:
            pick = solve_exact(sub, free, sub_cur, limit)
        except InfeasibleBudgetError:
            continue
        new = [maps[i][p] for i, p in enumerate(pick)]
        if new != cur:
            changed = sum(a != b for a, b in zip(cur, new))
            out.append(("resolve", new, f"{changed} tensor(s) changed" + ("" if limit is None else f" (at most {limit})")))
    used = int(sum(items[i].bytes[k] for i, k in enumerate(cur)))
    singles = sorted((e, i, k) for (i, k), e in measured.items() if used - items[i].bytes[cur[i]] + items[i].bytes[k] <= free and e < e_cur)
    for _, i, k in singles[:pair_trials]:
        new = list(cur)
        new[i] = k
        out.append(("single", new, f"{items[i].name} -> {items[i].options[k].name}"))
    ups = sorted((measured[(i, k)], i, k) for (i, k) in measured if items[i].bytes[k] > items[i].bytes[cur[i]] and measured[(i, k)] < e_cur)
    downs = [(i, k) for (i, k) in measured if items[i].bytes[k] < items[i].bytes[cur[i]]]
    pairs = []
    for eu, i, k in ups[: 3 * pair_trials]:
        for j, m in downs:
            nbytes = used - items[i].bytes[cur[i]] + items[i].bytes[k] - items[j].bytes[cur[j]] + items[j].bytes[m]
            if j != i and nbytes <= free:
                pairs.append((_delta(eu, e_cur) + _delta(measured[(j, m)], e_cur), i, k, j, m))
    for _, i, k, j, m in sorted(pairs)[:pair_trials]:
        new = list(cur)
        new[i], new[j] = k, m
        out.append(("pair", new, f"{items[i].name} -> {items[i].options[k].name}, {items[j].name} -> {items[j].options[m].name}"))
    return out


def _delta(e: float, e_cur: float) -> float:
    """Marginal damage in squared error (the additive currency of the knapsack); a diverging option costs a lot."""
    return e * e - e_cur * e_cur if math.isfinite(e) else 1e30


def _fin(v: float) -> float | None:
    return v if math.isfinite(v) else None


def _fmt(v: float | None) -> str:
    return "diverged" if v is None or not math.isfinite(v) else f"{v:.4g}"
