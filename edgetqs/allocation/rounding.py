"""Roundings: how an integer-planned tensor's values are chosen on its scale grid.

- ``rtn``: round to nearest (the converters round themselves; the planner's residuals are RTN's).
- ``gptq``: GPTQ (`edgetqs.allocation.gptq`): the integers that minimise each layer's output error on the
  float model's own closed-loop inputs, with RTN's scales (bytes and layouts unchanged). Tensors GPTQ cannot
  serve (biases, elementwise constants, lookup tables) keep round-to-nearest.

A plan records its rounding (``options.rounding``). Every measurement (evaluation, refinement, the
benchmark) computes with the same dequantized values and every converter stores exactly these integers
(read back and compared), through one `Rounder`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from ..core.model import Model
    from ..core.quantize import Precision, QuantizedTensor
    from ..core.rollout import RolloutSpec
    from .plan import Plan

ROUNDINGS = ("rtn", "gptq")
_HESSIANS: dict[str, tuple[dict[str, np.ndarray], dict[str, str]]] = {}
_INTEGERS: dict[str, dict[tuple[str, str], Any]] = {}


class Rounder:
    """Dequantized values and stored integers of any tensor at any precision, for one rounding.

    GPTQ's Hessians come from every input the float model sees while rolling ``contexts`` out for ``horizon``
    steps (computed once per model, contexts and horizon, and kept for the process)."""

    def __init__(
        self, model: Model, rounding: str, contexts: Any = None, spec: RolloutSpec | None = None, horizon: int | None = None
    ) -> None:
        from ..errors import BadInputError

        if rounding not in ROUNDINGS:
            raise BadInputError(f"rounding '{rounding}'; expected one of {', '.join(ROUNDINGS)}")
        if rounding == "gptq" and (contexts is None or spec is None or horizon is None):
            raise BadInputError("GPTQ rounding needs contexts to collect the layers' inputs: give --contexts or a project file")
        self.model, self.rounding, self.contexts, self.spec, self.horizon = model, rounding, contexts, spec, horizon
        key = f"{model.sha256}:{contexts.sha256() if contexts is not None else ''}:{horizon}"
        self._ints = _INTEGERS.setdefault(key, {})  # shared by every Rounder of the same calibration (kept for the process)
        if len(_INTEGERS) > 8:
            _INTEGERS.pop(next(iter(_INTEGERS)))

    def _hessians(self) -> tuple[dict[str, np.ndarray], dict[str, str]]:
        from ..core.rollout import closed_loop_inputs
        from .gptq import layer_hessians

        key = f"{self.model.sha256}:{self.contexts.sha256()}:{self.horizon}"
        if key not in _HESSIANS:
            feeds = closed_loop_inputs(self.model, self.spec, self.contexts, int(self.horizon or 1))  # type: ignore[arg-type]
            spec_of = {w.name: self.model.consumer(w.name) for w in self.model.weights if w.size > 1 and len(w.shape) >= 2}
            _HESSIANS[key] = layer_hessians(self.model.bytes, spec_of, feeds)
            if len(_HESSIANS) > 8:
                _HESSIANS.pop(next(iter(_HESSIANS)))
        return _HESSIANS[key]

    def integers(self, name: str, precision: Precision) -> QuantizedTensor | None:
        """The integers a converter must store for ``name`` at ``precision``; None: round to nearest."""
        if self.rounding == "rtn" or precision.kind != "int" or precision.bits > 8:
            return None
        key = (name, precision.name)
        if key not in self._ints:
            from .gptq import gptq_quantize

            hessians, _ = self._hessians()
            h = hessians.get(name)
            self._ints[key] = None if h is None else gptq_quantize(self.model.weight_array(name), h, precision, self.model.layout(name))
        return self._ints[key]

    def values(self, name: str, precision: Precision) -> np.ndarray:
        """What the runtime computes with for ``name`` at ``precision``."""
        from ..core.quantize import fake_quant

        w = self.model.weight_array(name)
        q = self.integers(name, precision)
        return q.dequantize().astype(w.dtype) if q is not None else fake_quant(w, precision, self.model.layout(name))

    def plan_values(self, plan: Plan) -> dict[str, np.ndarray]:
        return {t.name: self.values(t.name, t.precision) for t in plan.tensors}

    def plan_integers(self, plan: Plan) -> dict[str, QuantizedTensor] | None:
        if self.rounding == "rtn":
            return None
        out = {t.name: self.integers(t.name, t.precision) for t in plan.tensors}
        return {k: v for k, v in out.items() if v is not None}


def plan_integers(model: Model, plan: Plan, contexts: Any, spec: RolloutSpec, horizon: int) -> dict[str, QuantizedTensor] | None:
    """Tensor name -> integers and scales for the plan's rounding; None for round-to-nearest."""
    if plan.rounding == "rtn":
        return None
    return Rounder(model, plan.rounding, contexts, spec, horizon).plan_integers(plan)


def dequantized(model: Model, plan: Plan, contexts: Any = None, spec: Any = None, horizon: int | None = None) -> dict[str, np.ndarray]:
    """Weight name -> the values the runtime will compute with under the plan (its rounding included).

    Raises:
        BadInputError: a GPTQ plan given other contexts than it was calibrated on (its integers would differ)."""
    from ..errors import BadInputError

    cal = plan.calibration
    if cal is not None and contexts is not None and cal.get("contexts_sha256") != contexts.sha256():
        raise BadInputError(
            f"the plan's {plan.rounding} integers come from other contexts ({cal.get('source')}, k={cal.get('k')}); "
            "measure it with the contexts it was made with, or use a Rounder calibrated on those"
        )
    return Rounder(model, plan.rounding, contexts, spec, plan.horizon).plan_values(plan)
