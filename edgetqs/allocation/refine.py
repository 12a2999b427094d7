"""Refine a plan by measuring a few candidates: the knapsack's error model is additive, rollouts are not.

The planner predicts a plan's error as sqrt(sum_g (A_g r_g)^2): each group's damage measured alone,
added as if independent. Single-group predictions rank well against single-group measurements, but
at 2-5 bits per weight the errors of many groups interact and saturate, and the additive optimum
can push a few groups so low that the rollout suffers more than predicted. `refine` makes candidate
plans from the same scores, with the lowest tier raised step by step (no floor, then 3, 4, 5, 6
bits). It rolls each candidate out by simulated quantization on the scoring contexts (forward passes only), and keeps the
one with the lowest measured error. The candidates and their errors are recorded in the plan.
"""

from __future__ import annotations

from typing import Any

from ..core.rollout import float_reference
from ..errors import BadInputError
from .evaluate import measure, simulated_weights
from .plan import InfeasibleBudgetError, Plan, PlanOptions, make_plan

FLOORS = (None, 3, 4, 5, 6)


def refine(
    scores: Any, model: Any, target: Any, opts: PlanOptions, spec: Any, contexts: Any, floors: tuple[int | None, ...] = FLOORS
) -> tuple[Plan, list[dict[str, Any]]]:
    """The candidate with the lowest measured error at the score horizon, and every candidate's figures.

    Raises:
        InfeasibleBudgetError: the budget cannot be met even without a floor.
    """
    horizon = scores.horizon
    ref = float_reference(model, spec, contexts, horizon).steps
    seen: set[tuple] = set()
    rows: list[dict] = []
    best: tuple[float, Plan] | None = None
    for floor in floors:
        lowest = opts.lowest_bits if floor is None else max(floor, opts.lowest_bits or 0)
        try:
            plan = make_plan(scores, model, target, opts.model_copy(update={"lowest_bits": lowest}))
        except InfeasibleBudgetError:
            if floor is None:
                raise
            break  # a higher floor only needs more bytes
        except BadInputError:  # the floor leaves some tensor no precision on this target's menu
            continue
        key = tuple(sorted(plan.precisions().items()))
        if key in seen:
            continue
        m = measure(model, spec, contexts, simulated_weights(model, plan, contexts, spec), horizon, ref)
        row = {
            "lowest_bits": lowest,
            "weight_bytes": plan.weight_bytes,
            "predicted_error": plan.predicted_error,
            "measured_error": None if m.first_nonfinite is not None else m.error_at_horizon,
        }
        seen.add(key)
        rows.append(row)
        err = m.error_at_horizon if m.first_nonfinite is None else float("inf")
        if best is None or err < best[0]:
            best = (err, plan)
    if best is None:  # every floor left some tensor without a precision
        raise BadInputError("no candidate plan could be made with these options; relax --lowest or the pins")
    chosen = best[1]
    note = (
        "refined: candidates measured on the scoring contexts (lowest bits: predicted -> measured): "
        + "; ".join(f"{r['lowest_bits'] or 'none'}: {_f(r['predicted_error'])} -> {_f(r['measured_error'])}" for r in rows)
        + f"; kept lowest bits {chosen.options.lowest_bits or 'none'}"
    )
    return chosen.model_copy(update={"refinement": {"method": "floors", "candidates": rows}, "notes": tuple(chosen.notes) + (note,)}), rows


def _f(v: float | None) -> str:
    return "diverged" if v is None else f"{v:.3g}"
