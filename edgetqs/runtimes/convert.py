"""Convert: the float model + plan.json -> an artifact a runtime loads, verified by reading it back.

The runtime plug-in (`edgetqs.runtimes.base.RUNTIMES`) writes the artifact; this module does what every
format shares: it checks that the plan fits the format and the model, parses the artifact after writing
and compares each planned tensor's stored precision with the plan, reports weight bytes (what the plan
budgets) and file bytes (with graph and metadata overhead), and rolls the artifact out on the host
runtime beside the float model and beside the plan's simulated quantization (`convert.json`). Files are
written in a temporary folder and moved into place only when all of that succeeded, so a failure leaves
nothing half-written in the output folder.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
from pydantic import Field

from ..core.contexts import Contexts, ContextsInfo
from ..core.metrics import nrmse_by_lead
from ..core.model import Model
from ..core.results import Frozen, ResultFile, edgetqs_version, finite_or_none
from ..core.rollout import Rollout, RolloutSpec, float_reference
from ..errors import Hint
from .base import RUNTIMES, ConvertError, ConvertJob


class TensorCheck(Frozen):
    """One planned tensor as read back from the artifact."""

    name: str
    planned: str
    found: str
    match: bool
    bytes: int


class ConvertResult(ResultFile):
    """What `edgetqs convert` did, written as ``convert.json``.

    Errors are normalised RMSE by lead (`edgetqs.core.metrics`: each variable over its spread in the
    contexts' data), the same definition as check.json's ``nrmse_by_lead``."""

    KIND: ClassVar[str] = "convert.json"
    COMMAND: ClassVar[str] = "edgetqs convert"
    SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = SCHEMA_VERSION
    format: str
    artifact: str
    model: str
    model_sha256: str
    target: str
    runtime: str
    budget_bytes: int
    planned_weight_bytes: int
    weight_bytes: int  # read back from the artifact: every constant it stores
    file_bytes: int
    fp32_weight_bytes: int
    fp32_file_bytes: int
    tensors: tuple[TensorCheck, ...]
    all_match: bool
    horizon: int
    contexts: ContextsInfo
    one_step_error: float | None  # normalised RMSE of the artifact vs float at lead 1
    error_by_lead: tuple[float | None, ...]  # artifact vs float, per lead
    simulated_error_by_lead: tuple[float | None, ...]  # the plan's simulated quantization vs float
    artifact_vs_simulated: float | None  # largest normalised RMSE between the two rollouts over the leads
    first_nonfinite_step: int | None
    seconds: float
    versions: dict[str, str]
    notes: tuple[str, ...] = ()
    # full-integer runtimes: activation type, smallest tensor arena that runs (bisection in child
    # processes), what the interpreter's recording allocator reports, the target's RAM budget
    activations: str | None = None
    arena_bytes: int | None = None
    arena_bytes_reported: int | None = None
    ram_budget_bytes: int | None = None
    facts: dict[str, Any] = Field(default_factory=dict)


def _versions() -> dict[str, str]:
    import onnx
    import onnxruntime

    return {"edgetqs": edgetqs_version(), "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def _move_into(out: Path, files: list[Path], overwrite: bool) -> None:
    """Move the finished files into ``out`` (converters leave other files, op configs, behind in the work
    folder). Without ``overwrite`` nothing existing is replaced (``link`` never overwrites); the artifact
    goes last-but-one and convert.json last, so a reader pairing them sees convert.json only once the
    artifact it describes is in place."""
    from ..core.files import TargetExistsError, UnsafeTargetError

    for f in files:
        dest = out / f.name
        if dest.is_symlink() or (dest.exists() and not dest.is_file()):
            what = "a symbolic link" if dest.is_symlink() else "not a regular file"
            raise UnsafeTargetError(f"'{dest}' is {what}; edgetqs will not replace it: move it away or choose another --output")
        if overwrite:
            os.replace(f, dest)
        else:
            try:
                os.link(f, dest)
            except FileExistsError:
                raise TargetExistsError(
                    f"{dest} already exists", hint=Hint("overwrite", ("--overwrite",), say="pass {args} to replace it")
                ) from None
            f.unlink()


def _constant_checks(rt: Any, artifact: Path, model: Model, notes: list[str]) -> list[TensorCheck]:
    """The model's constants (initializers that are not weights) as the artifact stores them: exactly, or
    the conversion fails. A converter that folded one into another float constant is noted; a full-integer
    graph stores them as integers like every other tensor."""
    if not model.constants:
        return []
    values = {c.name: model.constant_array(c.name) for c in model.constants}
    states = rt.constant_states(artifact, values)
    checks = []
    for c in model.constants:
        state = states.get(c.name, "missing")
        ok = state in ("exact", "folded") or (state == "integer" and (rt.full_integer or rt.integer_activations))
        nbytes = int(values[c.name].nbytes) if state == "exact" else 0
        checks.append(TensorCheck(name=c.name, planned="exact (constant)", found=state, match=ok, bytes=nbytes))
    folded = [c.name for c in model.constants if states.get(c.name) == "folded"]
    if folded:
        notes.append(f"constant(s) {', '.join(folded[:5])} were folded or transformed by the converter (still float, never quantized)")
    if any(states.get(c.name) == "integer" for c in model.constants):
        notes.append(f"{len(model.constants)} constant(s) are integers in this full-integer graph, like every tensor of it")
    return checks


def artifact_name(model: Model, fmt: str) -> str:
    return f"{model.name}{RUNTIMES.get(fmt).suffix}"


def convert(
    model: Model,
    plan: Any,
    fmt: str,
    out_dir: str | Path,
    contexts: Contexts,
    spec: RolloutSpec,
    horizon: int | None = None,
    overwrite: bool = False,
    activations: str = "auto",
    target: Any = None,
    activation_goal: float | None = None,
) -> ConvertResult:
    """Write the artifact for ``plan`` in ``fmt`` under ``out_dir`` and verify it.

    Args:
        model: the float `Model` the plan was made for.
        plan: the `Plan`.
        fmt: a registered runtime (``ort``, ``ort-mobile``, ``tflite``, ``tflm``).
        out_dir: folder for the artifact and convert.json (created).
        contexts, spec: the rollout the host check runs (`edgetqs.core.inputs.resolve`).
        horizon: steps of the host check (default: the plan's score horizon).
        overwrite: replace an artifact of the same name.
        activations: full-integer runtimes only: ``int16``, ``int8`` or ``auto`` (the target's
            preference, falling back when the runtime refuses a kernel).
        target: the `Target` (default: the plan's target, looked up by name).
        activation_goal: ort with int8 activations: what the choice of integer activations aims at
            (`edgetqs.allocation.activations.choose_activations`; None: its default share of the target's tolerance).

    Raises:
        ConvertError: plan/model mismatch, a tensor or op the converter cannot handle, a planned
            precision not found on read-back, or weights over the budget.
    """
    from ..allocation.evaluate import simulated_weights

    rt = RUNTIMES.get(fmt)
    if plan.model_sha256 != model.sha256:
        raise ConvertError(f"plan.json was made for model sha256 {plan.model_sha256[:12]}..., not '{model.path}' ({model.sha256[:12]}...)")
    if sorted(e.name for e in plan.excluded) != sorted(c.name for c in model.constants):
        raise ConvertError(
            f"plan.json keeps {sorted(e.name for e in plan.excluded)[:5]} exact as constants, but the model read here has "
            f"{sorted(c.name for c in model.constants)[:5]}: convert with the plan's --include/--exclude rules (or replan)"
        )
    planned = {t.name for t in plan.tensors}
    weights = {w.name for w in model.weights}
    if planned != weights or not 1 <= plan.horizon <= 10_000 or plan.budget_bytes <= 0:
        missing, extra = sorted(weights - planned), sorted(planned - weights)
        raise ConvertError(
            f"plan.json does not describe '{model.path}': "
            + (f"no precision for {missing[:3]}; " if missing else "")
            + (f"tensors {extra[:3]} the model does not have; " if extra else "")
            + (f"horizon {plan.horizon}; " if not 1 <= plan.horizon <= 10_000 else "")
            + (f"budget {plan.budget_bytes} bytes; " if plan.budget_bytes <= 0 else "")
            + "make it again with `edgetqs plan`"
        )
    if plan.runtime not in rt.accepts:
        raise ConvertError(
            f"plan.json was made for runtime '{plan.runtime}', which cannot be written as {fmt}",
            hint=Hint("convert-format", ("--format", plan.runtime), say=f"convert with {{args}}, or replan with --runtime {rt.accepts[0]}"),
        )
    out = Path(out_dir)
    name = artifact_name(model, fmt)
    if (out / name).exists() and not overwrite:
        raise ConvertError(f"{out / name} already exists", hint=Hint("overwrite", ("--overwrite",), say="pass {args} to replace it"))
    if target is None:
        from ..allocation.targets import find_target

        try:
            target = find_target(plan.target)
        except Exception:  # noqa: BLE001 - a plan for a target file that moved: convert without its RAM check
            target = None
    t0 = time.perf_counter()
    horizon = horizon or plan.horizon
    out.parent.mkdir(parents=True, exist_ok=True)
    from ..core.files import clean_stale, make_work_dir

    clean_stale(out.parent, ".edgetqs-convert-")  # work folders of killed conversions
    work = make_work_dir(out.parent, ".edgetqs-convert-")
    try:
        done = rt.convert(ConvertJob(model, plan, work, name, contexts, spec, horizon, target, activations, activation_goal))
        notes = list(done.notes)
        if target is None:
            notes.append(f"target '{plan.target}' not found: the artifact was not checked against its RAM budget")
        done.checks.extend(_constant_checks(rt, done.artifact, model, notes))
        bad = [c for c in done.checks if not c.match]
        if bad:
            raise ConvertError(
                "read-back does not match the plan: " + "; ".join(f"'{c.name}' planned {c.planned}, stored {c.found}" for c in bad[:5])
            )
        if done.weight_bytes > plan.budget_bytes:
            raise ConvertError(
                f"the artifact stores {done.weight_bytes:,} weight bytes, over the budget of {plan.budget_bytes:,}; replan with a smaller budget"
            )
        # the host check: artifact vs float, and vs the plan's simulated quantization
        ref = float_reference(model, spec, contexts, horizon)
        got = Rollout(model, spec, contexts.statics, session=done.session, forcings=contexts.forcing_arrays).run(contexts.arrays, horizon)
        sim = Rollout(
            model,
            spec,
            contexts.statics,
            model_bytes=model.with_weights(simulated_weights(model, plan, contexts, spec)),
            forcings=contexts.forcing_arrays,
        ).run(contexts.arrays, horizon)
        lead = nrmse_by_lead(got.steps, ref.steps, contexts.spreads, spec.mode, spec.channel_axis)
        lead_sim = nrmse_by_lead(sim.steps, ref.steps, contexts.spreads, spec.mode, spec.channel_axis)
        lead_as = nrmse_by_lead(got.steps, sim.steps, contexts.spreads, spec.mode, spec.channel_axis)
        facts = dict(done.facts)
        result = ConvertResult(
            edgetqs_version=edgetqs_version(),
            format=fmt,
            artifact=name,
            model=model.name,
            model_sha256=model.sha256,
            target=plan.target,
            runtime=plan.runtime,
            budget_bytes=plan.budget_bytes,
            planned_weight_bytes=plan.weight_bytes,
            weight_bytes=done.weight_bytes,
            file_bytes=done.artifact.stat().st_size,
            fp32_weight_bytes=plan.fp32_bytes,
            fp32_file_bytes=len(model.bytes),
            tensors=tuple(done.checks),
            all_match=not bad,
            horizon=horizon,
            contexts=contexts.info(),
            one_step_error=finite_or_none([lead[0]])[0],
            error_by_lead=finite_or_none(lead),
            simulated_error_by_lead=finite_or_none(lead_sim),
            artifact_vs_simulated=finite_or_none([np.max(lead_as)])[0],
            first_nonfinite_step=got.first_nonfinite,
            seconds=time.perf_counter() - t0,
            versions={**_versions(), **done.versions},
            notes=tuple(notes),
            activations=facts.pop("activations", None),
            arena_bytes=facts.pop("arena_bytes", None),
            arena_bytes_reported=facts.pop("arena_bytes_reported", None),
            ram_budget_bytes=facts.pop("ram_budget_bytes", None),
            facts=facts,
        )
        result.save(work / "convert.json")
        out.mkdir(parents=True, exist_ok=True)
        _move_into(out, [done.artifact, work / "convert.json"], overwrite)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
