"""Measured error of a plan without any converter: simulated quantization.

Every weight is replaced by the values the runtime will compute with under the plan (its rounding
included, `edgetqs.allocation.rounding`) and the model is rolled out in onnxruntime beside the float32
model. Errors are in the one normalisation of `edgetqs.core.metrics` (each variable over its spread).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..core.contexts import Contexts
from ..core.metrics import channel_axis, divergence, inverse_spread, rms_by_lead
from ..core.model import Model
from ..core.results import finite_or_none
from ..core.rollout import Rollout, RolloutSpec, float_reference
from .plan import Evaluation, Plan


@dataclass(frozen=True)
class Measured:
    """Quantized vs float rollout errors (normalised units)."""

    error_at_horizon: float  # mean over contexts of e_T: what the predicted error estimates; inf if it diverged
    rmse_by_lead: tuple[float, ...]  # RMS over contexts and variables, per lead step
    rmse_by_variable: tuple[float, ...]  # at the horizon, per variable
    first_nonfinite: int | None
    per_context: tuple[float, ...] = ()  # e_T per context (inf where it diverged): for bootstrap intervals
    per_context_variable: np.ndarray | None = None  # [K, variable] at the horizon (inf where it diverged)

    def to_evaluation(self, contexts: Contexts, horizon: int) -> Evaluation:
        variables = list(contexts.variables) or [f"ch{i}" for i in range(len(self.rmse_by_variable))]
        if len(variables) != len(self.rmse_by_variable):
            variables = [f"ch{i}" for i in range(len(self.rmse_by_variable))]
        return Evaluation(
            contexts=contexts.info(),
            horizon=horizon,
            error_at_horizon=finite_or_none([self.error_at_horizon])[0] if self.first_nonfinite is None else None,
            first_nonfinite_step=self.first_nonfinite,
            nrmse_by_lead=finite_or_none(self.rmse_by_lead),
            nrmse_by_variable_at_horizon=dict(zip(variables, finite_or_none(self.rmse_by_variable))),
        )


def simulated_weights(model: Model, plan: Plan, contexts: Contexts | None = None, spec: RolloutSpec | None = None) -> dict[str, np.ndarray]:
    """Weight name -> the values the runtime computes with at the planned precision and rounding.

    GPTQ rounding needs the contexts and rollout its Hessians come from (RTN needs neither)."""
    from .rounding import dequantized

    return dequantized(model, plan, contexts, spec)


def measure(
    model: Model,
    spec: RolloutSpec,
    contexts: Contexts,
    weights: dict[str, np.ndarray],
    horizon: int,
    reference: list[np.ndarray] | None = None,
    threads: int = 0,
) -> Measured:
    """Roll out the model with ``weights`` baked in and compare with the float rollout (``threads``: the session's
    intra-op threads, 0 for onnxruntime's default)."""
    if reference is None:
        reference = float_reference(model, spec, contexts, horizon).steps
    quant = Rollout(
        model, spec, contexts.statics, threads=threads, model_bytes=model.with_weights(weights), forcings=contexts.forcing_arrays
    ).run(contexts.arrays, horizon)
    inv = [inverse_spread(sp, spec.mode, spec.channel_axis, st.ndim) for sp, st in zip(contexts.spreads, reference)]
    with np.errstate(all="ignore"):
        e = divergence(quant.steps, reference, inv)  # [T, K]
        by_lead = rms_by_lead(e)
        # per variable at the horizon, over every pair
        per_var: list[float] = []
        per_cv: list[np.ndarray] = []
        for q, r, i in zip(quant.steps, reference, inv):
            d = (q[-1].astype(np.float64) - r[-1]) * i[0]
            ax = channel_axis(spec.mode, spec.channel_axis, d.ndim)
            per_var += [float(v) for v in np.sqrt(np.mean(np.moveaxis(d, ax, 0).reshape(d.shape[ax], -1) ** 2, axis=1))]
            moved = np.moveaxis(d, ax, 1)  # [K, variable, ...]
            per_cv.append(np.sqrt(np.mean(moved.reshape(moved.shape[0], moved.shape[1], -1) ** 2, axis=2)))
    finite = quant.first_nonfinite is None
    at_t = float(np.mean(e[-1])) if finite else float("inf")
    per_ctx = tuple(float(v) if np.isfinite(v) else float("inf") for v in e[-1])
    cv = np.concatenate(per_cv, axis=1)
    return Measured(
        at_t, tuple(float(v) for v in by_lead), tuple(per_var), quant.first_nonfinite, per_ctx, np.where(np.isfinite(cv), cv, np.inf)
    )


def evaluate(
    model: Model, plan: Plan, spec: RolloutSpec, contexts: Contexts, horizon: int | None = None, reference: list[np.ndarray] | None = None
) -> Measured:
    """Measure ``plan`` on ``contexts`` (simulated quantization with the plan's rounding)."""
    return measure(model, spec, contexts, simulated_weights(model, plan, contexts, spec), horizon or plan.horizon, reference)


def with_evaluation(plan: Plan, measured: Measured, contexts: Contexts, horizon: int) -> Plan:
    return plan.model_copy(update={"evaluation": measured.to_evaluation(contexts, horizon)})
