"""The plan stage as the CLI, the API and `build` run it: a plan, optionally refined by measurement,
evaluated by simulated quantization, and set on a Pareto front of other budgets from the same scores."""

from __future__ import annotations

from typing import Any

from ..core.contexts import Contexts
from ..core.model import Model
from ..core.rollout import RolloutSpec, float_reference
from ..sensitivity.scores import Scores
from .evaluate import Measured, evaluate, with_evaluation
from .plan import ParetoPoint, Plan, PlanOptions, make_plan, pareto
from .targets import Target


def plan_stage(
    scores: Scores,
    model: Model,
    target: Target,
    opts: PlanOptions,
    *,
    spec: RolloutSpec | None = None,
    contexts: Contexts | None = None,
    refine: bool = False,
    evaluate_plans: bool = False,
    pareto_n: int | None = None,
    log: Any = None,
) -> Plan:
    """Plan bits for ``target``.

    Args:
        spec, contexts: the rollout that refinement and evaluation measure on (needed for either).
        refine: measure candidate plans and keep the best (`edgetqs.allocation.refine`).
        evaluate_plans: store the measured error of the plan (and of each Pareto point) in plan.json.
        pareto_n: also plan at this many budgets from the smallest feasible to fp32.

    Raises:
        BadInputError: refinement or evaluation asked for without contexts; plus what planning raises.
    """
    from ..errors import BadInputError

    if (refine or evaluate_plans) and (spec is None or contexts is None):
        raise BadInputError("refining or evaluating a plan needs contexts to roll out: give --contexts or a project file")
    if refine:
        from .refine import refine as run_refine

        assert spec is not None and contexts is not None
        plan, _ = run_refine(scores, model, target, opts, spec, contexts)
        if log:
            log(f"note: {plan.notes[-1]}")
    else:
        plan = make_plan(scores, model, target, opts)
    ref = None
    measured: Measured | None = None
    if evaluate_plans:
        assert spec is not None and contexts is not None
        ref = float_reference(model, spec, contexts, scores.horizon).steps
        measured = evaluate(model, plan, spec, contexts, scores.horizon, ref)
        plan = with_evaluation(plan, measured, contexts, scores.horizon)
    if pareto_n:
        points = []
        n_params = sum(t.n_params for t in plan.tensors)
        for p in pareto(scores, model, target, opts, pareto_n):
            err = None
            if evaluate_plans and spec is not None and contexts is not None:
                mm = evaluate(model, p, spec, contexts, scores.horizon, ref)
                err = mm.error_at_horizon if mm.first_nonfinite is None else None
            points.append(
                ParetoPoint(
                    budget_bytes=p.budget_bytes,
                    weight_bytes=p.weight_bytes,
                    bits_per_weight=8 * (p.weight_bytes - p.fixed_bytes) / max(n_params, 1),
                    predicted_error=p.predicted_error,
                    measured_error=err,
                )
            )
        here = ParetoPoint(
            budget_bytes=plan.budget_bytes,
            weight_bytes=plan.weight_bytes,
            bits_per_weight=8 * (plan.weight_bytes - plan.fixed_bytes) / max(n_params, 1),
            predicted_error=plan.predicted_error,
            chosen=True,
            measured_error=None if measured is None or measured.first_nonfinite is not None else measured.error_at_horizon,
        )
        plan = plan.model_copy(update={"pareto": tuple(sorted([*points, here], key=lambda q: (q.weight_bytes, not q.chosen)))})
    return plan
