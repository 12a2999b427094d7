"""The Python API: one function per CLI command, taking paths or the objects the others return.

    import edgetqs
    scores = edgetqs.score("model.onnx", "contexts.npz")
    plan = edgetqs.plan(scores, "model.onnx", "stm32h743")
    conv = edgetqs.convert("model.onnx", plan, "tflm", "artifacts", contexts="contexts.npz")
    result = edgetqs.check("artifacts/model.tflm.tflite", model="model.onnx", contexts="contexts.npz", target="stm32h743")
    bundle = edgetqs.build("model.onnx", "raspberrypi", contexts="contexts.npz")
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def _model_path(model: Any) -> Path | None:
    if model is None:
        return None
    return Path(getattr(model, "path", model))


def _inputs(model: Any, contexts: Any, k: int | None, project: Any):
    from .inputs import resolve
    from .project import find_project, load_project

    proj = load_project(project) if project else find_project()
    return resolve(_model_path(model), proj, contexts_path=None if contexts is None else Path(contexts), k=k)


def _target(target: Any):
    from .targets import Target, find_target

    return target if isinstance(target, Target) else find_target(str(target))


def plan(scores: Any, model: Any, target: Any, **options: Any):
    """A `Plan` for ``target`` from scores (a `Scores` or a scores.json path); ``options`` are
    `edgetqs.plan.PlanOptions` fields (runtime, budget_bytes, ratio, objective, allocator, ...)."""
    from .model import Model, load_model
    from .plan import PlanOptions, make_plan
    from .tqs import Scores

    s = scores if isinstance(scores, Scores) else Scores.load(scores)
    m = model if isinstance(model, Model) else load_model(model)
    return make_plan(s, m, _target(target), PlanOptions(**options))


def convert(model: Any, plan: Any, fmt: str, out_dir: Any = "artifacts", *, contexts: Any = None, k: int | None = None,
            horizon: int | None = None, overwrite: bool = False, project: Any = None):
    """Write and verify the artifact (a `ConvertResult`); ``plan`` is a `Plan` or a plan.json path."""
    from .convert import convert as run
    from .plan import Plan

    p = plan if isinstance(plan, Plan) else Plan.load(plan)
    inp = _inputs(model, contexts, k, project)
    return run(inp.model, p, fmt, Path(out_dir), inp.contexts, inp.spec, horizon=horizon, overwrite=overwrite)


def check(artifact: Any, *, device: str = "local", reference: Any = None, model: Any = None, contexts: Any = None,
          k: int | None = None, horizon: int | None = None, target: Any = None, tolerance: float | None = None, project: Any = None):
    """Roll ``artifact`` out on ``device`` and compare with the float trajectory (a `CheckResult`).

    The reference is a reference.npz path, or computed from ``model`` and ``contexts``."""
    from .check import Reference, check as run, contexts_with_truth, make_reference
    from .devices import find_device

    tg = _target(target) if target is not None else None
    tol = tolerance if tolerance is not None else (tg.validation_tolerance if tg else 0.1)
    steps = horizon or (tg.validation_horizon if tg else 20)
    if reference is not None:
        ref = reference if isinstance(reference, Reference) else Reference.load(Path(reference))
    else:
        inp = _inputs(model, contexts, k, project)
        ref = make_reference(inp.model, inp.spec, contexts_with_truth(inp, steps), steps)
    result, _ = run(Path(artifact), ref, find_device(device), tol, target=tg.name if tg else None)
    return result


def build(model: Any = None, target: Any = "raspberrypi", **kwargs: Any):
    """`edgetqs build`: the whole pipeline into ``output/<model>-<target>/`` (a `BuildResult`).
    Keyword arguments as `edgetqs.build.build` (device, budget, ratio, fmt, output, force, contexts_path, ...)."""
    from .build import build as run

    if "contexts" in kwargs:
        kwargs["contexts_path"] = Path(kwargs.pop("contexts"))
    kwargs.setdefault("log", lambda m: None)
    return run(_model_path(model), str(getattr(target, "path", target)), **kwargs)
