"""Roundings: how an integer-planned tensor's values are chosen on its scale grid.

- ``rtn``: round to nearest (the converters do it themselves; the planner's residuals are RTN's).
- ``gptq``: GPTQ (`edgetqs.allocation.gptq`): the integers that minimise each layer's output error on the
  float model's own closed-loop inputs, with the same scales (so bytes and layouts are unchanged).
  Tensors GPTQ cannot serve (biases, elementwise constants) keep round-to-nearest.

A plan records its rounding (``options.rounding``); every converter stores exactly these integers
(read back and compared) and every measurement uses the same dequantized weights.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..core.model import Model
    from ..core.quantize import QuantizedTensor
    from ..core.rollout import RolloutSpec
    from .plan import Plan

ROUNDINGS = ("rtn", "gptq")
_CACHE: dict[tuple[str, str, str], tuple[dict[str, Any], list[str]]] = {}


def plan_integers(model: Model, plan: Plan, contexts: Any, spec: RolloutSpec, horizon: int) -> dict[str, QuantizedTensor] | None:
    """Tensor name -> integers and scales for the plan's rounding; None for round-to-nearest.

    GPTQ's Hessians come from every input the float model sees while rolling the contexts out for
    ``horizon`` steps. Results are memoised per (model, plan, contexts), since plan evaluation,
    conversion and the benchmark all ask for the same integers."""
    if plan.rounding == "rtn":
        return None
    key = (model.sha256, plan.model_dump_json(include={"tensors"}), contexts.sha256() + f":{horizon}")
    if key not in _CACHE:
        from ..core.rollout import closed_loop_inputs
        from .gptq import gptq_weights

        feeds = closed_loop_inputs(model, spec, contexts, horizon)
        ints = {t.name: t.precision for t in plan.tensors if t.precision.kind == "int" and t.precision.bits <= 16}
        layouts = {n: model.layout(n) for n in ints}
        spec_of = {n: model.consumer(n) for n in ints}
        _CACHE[key] = gptq_weights(model.bytes, spec_of, ints, layouts, feeds)
        if len(_CACHE) > 64:
            _CACHE.pop(next(iter(_CACHE)))
    return _CACHE[key][0]


def dequantized(model: Model, plan: Plan, contexts: Any = None, spec: Any = None, horizon: int | None = None) -> dict[str, np.ndarray]:
    """Weight name -> the values the runtime will compute with under the plan (its rounding included)."""
    from ..core.quantize import fake_quant

    ints = plan_integers(model, plan, contexts, spec, horizon or plan.horizon) if plan.rounding != "rtn" else None
    out = {}
    for t in plan.tensors:
        w = model.weight_array(t.name)
        if ints and t.name in ints:
            out[t.name] = ints[t.name].dequantize().astype(w.dtype)
        else:
            out[t.name] = fake_quant(w, t.precision, model.layout(t.name))
    return out
