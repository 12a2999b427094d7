"""Measured error of a plan without any converter: simulated quantization.

Every weight is replaced by its dequantized value at the planned precision (the same rounding the
converters realise) and the model is rolled out in onnxruntime beside the float32 model. Errors
are normalised per variable by the spread of the float trajectories (the TQS normalisation).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .contexts import Contexts
from .model import Model
from .plan import Plan
from .quantize import fake_quant, parse_precision
from .rollout import Rollout, RolloutSpec
from .jsonfile import finite_or_none
from .tqs import channel_inv_scale, divergence, rms_by_lead


@dataclass(frozen=True)
class Measured:
    """Quantized vs float rollout errors (normalised units)."""

    error_at_horizon: float  # mean over contexts of e_T: what the predicted error estimates; inf if it diverged
    rmse_by_lead: tuple[float, ...]  # RMS over contexts and variables, per lead step
    rmse_by_variable: tuple[float, ...]  # at the horizon, per channel
    first_nonfinite: int | None

    def to_dict(self, contexts: Contexts, horizon: int) -> dict:
        """The evaluation as stored in plan.json (non-finite values as null)."""
        variables = list(contexts.variables) or [f"ch{i}" for i in range(len(self.rmse_by_variable))]
        return {
            "contexts": contexts.describe(), "horizon": horizon,
            "error_at_horizon": finite_or_none([self.error_at_horizon])[0] if self.first_nonfinite is None else None,
            "first_nonfinite_step": self.first_nonfinite,
            "nrmse_by_lead": list(finite_or_none(self.rmse_by_lead)),
            "nrmse_by_variable_at_horizon": dict(zip(variables, finite_or_none(self.rmse_by_variable))),
        }


def simulated_weights(model: Model, plan: Plan) -> dict[str, np.ndarray]:
    """Weight name -> dequantized values at the planned precision."""
    out = {}
    for t in plan.tensors:
        w = model.weight_array(t.name)
        out[t.name] = fake_quant(w, parse_precision(t.precision), model.layout(t.name))
    return out


def measure(model: Model, spec: RolloutSpec, contexts: Contexts, weights: dict[str, np.ndarray], horizon: int,
            reference: list[np.ndarray] | None = None) -> Measured:
    """Roll out the model with ``weights`` baked in and compare with the float rollout."""
    if reference is None:
        reference = Rollout(model, spec, contexts.statics, model_bytes=model.bytes).run(contexts.arrays, horizon).steps
    quant = Rollout(model, spec, contexts.statics, model_bytes=model.with_weights(weights)).run(contexts.arrays, horizon)
    inv = channel_inv_scale(reference, spec, contexts.arrays)
    with np.errstate(all="ignore"):
        e = divergence(quant.steps, reference, inv)  # [T, K]
        by_lead = rms_by_lead(e)
        # per variable at the horizon: move the channel axis first in the first fed-back tensor
        d = (quant.steps[0][-1].astype(np.float64) - reference[0][-1]) * inv[0][0]
        ax = spec.channel_axis if spec.channel_axis is not None else -1
        ax = ax if ax >= 0 else d.ndim + ax
        per_var = np.sqrt(np.mean(np.moveaxis(d, ax, 0).reshape(d.shape[ax], -1) ** 2, axis=1))
    at_t = float(np.mean(e[-1])) if quant.first_nonfinite is None else float("inf")
    return Measured(at_t, tuple(float(v) for v in by_lead), tuple(float(v) for v in per_var), quant.first_nonfinite)
