"""The score -> plan chain, built once here instead of in every test file."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgetqs.allocation.plan import Plan, PlanOptions, make_plan
from edgetqs.allocation.targets import find_target
from edgetqs.core.contexts import Contexts, read_record, select_contexts
from edgetqs.core.model import Model, load_model
from edgetqs.core.rollout import RolloutSpec, SpecHints, infer_spec
from edgetqs.sensitivity.scores import ProbeSettings, Scores
from edgetqs.sensitivity.sweep import run_sweep


@dataclass
class Chain:
    model: Model
    spec: RolloutSpec
    contexts: Contexts
    scores: Scores

    def plan(self, target: str = "raspberrypi", **options: object) -> Plan:
        return make_plan(self.scores, self.model, find_target(target), PlanOptions(**options))


def record_for(path: Path, rows: int, channels: int, seed: int = 0) -> Path:
    np.save(path, np.random.default_rng(seed).standard_normal((rows, channels)).astype(np.float32))
    return path


def scored(
    model_path: Path,
    record: Path | None = None,
    *,
    k: int = 3,
    horizon: int = 5,
    span: tuple[float, float] = (0.0, 1.0),
    hints: SpecHints | None = None,
    rows: int = 60,
    statics: dict[str, np.ndarray] | None = None,
    **settings: object,
) -> Chain:
    """Load ``model_path``, cut ``k`` contexts from ``record`` (a seeded random record of ``rows`` steps shaped like
    the first fed-back input, with ``statics``, beside the model when None) and score them."""
    m = load_model(model_path)
    spec = infer_spec(m, hints or SpecHints())
    if record is None:
        shape = [d if d is not None else 1 for d in next(i for i in m.inputs if i.name == spec.pairs[0][0]).shape[1:]]
        if spec.mode == "window":
            shape = shape[1:]
        record = model_path.with_suffix(".npz")
        np.savez(record, record=np.random.default_rng(0).standard_normal([rows, *shape]).astype(np.float32), **(statics or {}))
    ctx = select_contexts(read_record(record, spec), m, spec, k, span=span)
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=horizon, **settings))  # type: ignore[arg-type]
    return Chain(m, spec, ctx, s)
