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
from .rescore import RescoreSettings
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
    ladder: Scores | None = None,
    rescore: RescoreSettings | None = None,
    log: Any = None,
) -> Plan:
    """Plan bits for ``target``.

    Args:
        spec, contexts: the rollout that refinement and evaluation measure on (needed for either).
        refine: re-score the plan in context (`edgetqs.allocation.rescore`): measure each tensor's damage with
            the rest of the plan quantized, re-solve, keep what improves on held-back contexts too.
        ladder: scores with quant-probe gains per bit-width, a second starting point for the re-scoring.
        rescore: how hard the re-scoring works (rollout budget, rounds).
        evaluate_plans: store the measured error of the plan (and of each Pareto point) in plan.json.
        pareto_n: also plan at this many budgets from the smallest feasible to fp32.

    Raises:
        BadInputError: refinement or evaluation asked for without contexts; plus what planning raises.
    """
    from ..errors import BadInputError

    needs = refine or evaluate_plans or opts.rounding != "rtn"
    if needs and (spec is None or contexts is None):
        raise BadInputError(
            f"{'re-scoring' if refine else 'evaluating' if evaluate_plans else opts.rounding + ' rounding of'} a plan needs "
            "contexts to roll out: give --contexts or a project file"
        )
    if refine and spec is not None and contexts is not None:
        from ..core.contexts import more_contexts
        from .rescore import rescore as run_rescore

        settings = rescore or RescoreSettings()
        search = more_contexts(contexts, model, spec, settings.contexts)
        plan = run_rescore(scores, model, target, opts, spec, search, ladder=ladder, settings=settings, log=log)
    else:
        plan = make_plan(scores, model, target, opts)
    if opts.rounding != "rtn" and contexts is not None:
        plan = plan.model_copy(
            update={
                "calibration": {
                    "source": contexts.source,
                    "k": contexts.k,
                    "contexts_sha256": contexts.sha256(),
                    "horizon": scores.horizon,
                    "span": list(contexts.span),
                    "pick": contexts.pick,
                }
            }
        )
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
