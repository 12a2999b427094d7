"""Convert: the float model + plan.json -> an artifact a runtime loads, verified by reading it back.

Formats: ``ort`` (ONNX with weight-only QDQ / fp16 Casts), ``ort-mobile`` (``.ort``, 4-bit through
MatMulNBits), ``tflite`` (onnx2tf + ai-edge-quantizer, see `edgetqs.convert.tflite`) and ``tflm``
(full-integer TFLite for TFLite-Micro with a measured tensor arena, see `edgetqs.convert.tflm`). Every artifact is parsed after
writing and each planned tensor's stored precision compared with the plan; sizes are reported as
weight bytes (what the plan budgets) and file bytes (with graph and metadata overhead); the artifact
is rolled out on the host runtime beside the float model and beside the plan's simulated
quantization. Files are written in a temporary folder and moved into place only when all of that
succeeded, so a failure leaves nothing half-written in the output folder.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from ..errors import EdgetqsError

SCHEMA_VERSION = 1
FORMATS = ("ort", "ort-mobile", "tflite", "tflm")
# which plan runtimes a format accepts
_RUNTIMES = {"ort": ("ort", "ort-mobile"), "ort-mobile": ("ort-mobile", "ort"), "tflite": ("tflite",), "tflm": ("tflm",)}


class ConvertError(EdgetqsError):
    """A converter cannot realise the plan (missing tensor, unsupported op or precision, over budget)."""


@dataclass(frozen=True)
class TensorCheck:
    name: str
    planned: str
    found: str
    match: bool
    bytes: int


@dataclass(frozen=True)
class ConvertResult:
    """What `edgetqs convert` did, written as ``convert.json``."""

    format: str
    artifact: str
    model: str
    model_sha256: str
    target: str
    runtime: str
    budget_bytes: int
    planned_weight_bytes: int
    weight_bytes: int  # read back from the artifact: every initializer it stores
    file_bytes: int
    fp32_weight_bytes: int
    fp32_file_bytes: int
    tensors: tuple[TensorCheck, ...]
    all_match: bool
    horizon: int
    contexts: dict
    one_step_error: float | None  # normalised RMSE of the artifact vs float after one step
    error_by_lead: tuple[float | None, ...]  # artifact vs float, per lead step
    simulated_error_by_lead: tuple[float | None, ...]  # the plan's simulated quantization vs float
    artifact_vs_simulated: float | None  # largest normalised difference between the two rollouts
    first_nonfinite_step: int | None
    seconds: float
    versions: dict
    schema_version: int = SCHEMA_VERSION
    notes: tuple[str, ...] = field(default=())
    # TFLite-Micro only: activation type, smallest tensor arena that runs (bisection in child
    # processes), what the interpreter's recording allocator reports, the target's RAM budget
    activations: str | None = None
    arena_bytes: int | None = None
    arena_bytes_reported: int | None = None
    ram_budget_bytes: int | None = None

    def to_dict(self) -> dict:
        d = asdict(self)
        d["tensors"] = [asdict(t) for t in self.tensors]
        d["notes"] = list(self.notes)
        return d

    def save(self, path: Path) -> Path:
        from ..jsonfile import write_json

        return write_json(path, self.to_dict())


def _versions() -> dict:
    import onnx
    import onnxruntime

    from .. import __version__

    return {"edgetqs": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__, "numpy": np.__version__}


def convert(model, plan, fmt: str, out_dir: str | Path, contexts, spec, horizon: int | None = None, overwrite: bool = False,
            activations: str = "auto") -> ConvertResult:
    """Write the artifact for ``plan`` in ``fmt`` under ``out_dir`` and verify it.

    Args:
        model: the float `Model` the plan was made for.
        plan: the `Plan`.
        fmt: one of ``ort``, ``ort-mobile``, ``tflite``, ``tflm``.
        out_dir: folder for the artifact and convert.json (created).
        contexts, spec: the rollout the host check runs (`edgetqs.inputs.resolve`).
        horizon: steps of the host check (default: the plan's score horizon).
        overwrite: replace an artifact of the same name.
        activations: ``tflm`` only: ``int16``, ``int8`` or ``auto`` (the target's preference, falling
            back when TFLM refuses a kernel).

    Raises:
        ConvertError: plan/model mismatch, a tensor or op the converter cannot handle, a planned
            precision not found on read-back, or weights over the budget.
    """
    from ..evaluate import simulated_weights
    from ..jsonfile import finite_or_none
    from ..rollout import Rollout
    from ..tqs import channel_inv_scale, divergence, rms_by_lead
    from . import readback

    if fmt not in FORMATS:
        raise ConvertError(f"format '{fmt}'; expected one of {', '.join(FORMATS)}")
    if plan.model_sha256 != model.sha256:
        raise ConvertError(f"plan.json was made for model sha256 {plan.model_sha256[:12]}..., not '{model.path}' ({model.sha256[:12]}...)")
    if plan.runtime not in _RUNTIMES[fmt]:
        raise ConvertError(f"plan.json was made for runtime '{plan.runtime}', which cannot be written as {fmt}; replan with --runtime {_RUNTIMES[fmt][0]}")
    out = Path(out_dir)
    ext = {"ort": ".onnx", "ort-mobile": ".ort", "tflite": ".tflite", "tflm": ".tflm.tflite"}[fmt]
    name = f"{model.name}.{fmt}{ext}" if fmt == "ort" else f"{model.name}{ext}"
    if (out / name).exists() and not overwrite:
        raise ConvertError(f"{out / name} already exists; pass --overwrite to replace it")
    t0 = time.perf_counter()
    horizon = horizon or plan.horizon
    out.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".edgetqs-convert-", dir=out.parent))
    notes: list[str] = []
    facts: dict = {}
    try:
        nbits: dict[str, str] = {}
        if fmt in ("ort", "ort-mobile"):
            from .ort import qdq_model, to_ort_format

            data, nbits = qdq_model(model, plan, mobile=fmt == "ort-mobile")
            onnx_path = work / (model.name + ".onnx")
            onnx_path.write_bytes(data)
            if fmt == "ort":
                artifact = work / name
                onnx_path.replace(artifact)
            else:
                artifact = to_ort_format(onnx_path, work)
                onnx_path.unlink()
            g = readback.view(artifact)
            checks = []
            for t in plan.tensors:
                found, nbytes = readback.stored_precision(g, t.name, nbits)
                planned = t.precision if t.precision != "int32" else "fp32"  # float graphs keep full-integer biases in fp32
                checks.append(TensorCheck(t.name, t.precision, found, found == planned, nbytes))
            weight_bytes = sum(i.nbytes for i in g.inits.values())
            roll_kw = {"model_bytes": artifact.read_bytes(), "ort_format": fmt == "ort-mobile"}
        elif fmt == "tflite":
            from .tflite import convert_tflite

            artifact, checks, weight_bytes, roll_kw, more = convert_tflite(model, plan, fmt, work, name, contexts, spec, horizon)
            notes.extend(more)
        else:
            from ..targets import find_target
            from .tflm import convert_tflm

            try:
                target = find_target(plan.target)
            except EdgetqsError:
                target = None
                notes.append(f"target '{plan.target}' not found: the arena was not checked against a RAM budget")
            artifact, checks, weight_bytes, roll_kw, more, facts = convert_tflm(model, plan, work, name, contexts, spec, horizon, target, activations)
            notes.extend(more)
        bad = [c for c in checks if not c.match]
        if bad:
            raise ConvertError("read-back does not match the plan: " + "; ".join(f"'{c.name}' planned {c.planned}, stored {c.found}" for c in bad[:5]))
        if weight_bytes > plan.budget_bytes:
            raise ConvertError(f"the artifact stores {weight_bytes:,} weight bytes, over the budget of {plan.budget_bytes:,}; replan with a smaller budget")
        # the host check: artifact vs float, and vs the plan's simulated quantization
        ref = Rollout(model, spec, contexts.statics, model_bytes=model.bytes).run(contexts.arrays, horizon)
        if roll_kw.get("runner") is not None:
            got = roll_kw["runner"](contexts.arrays, horizon)
        else:
            got = Rollout(model, spec, contexts.statics, **roll_kw).run(contexts.arrays, horizon)
        sim = Rollout(model, spec, contexts.statics, model_bytes=model.with_weights(simulated_weights(model, plan))).run(contexts.arrays, horizon)
        inv = channel_inv_scale(ref.steps, spec, contexts.arrays)
        with np.errstate(all="ignore"):
            e = divergence(got.steps, ref.steps, inv)
            e_sim = divergence(sim.steps, ref.steps, inv)
            e_as = divergence(got.steps, sim.steps, inv)
        by_lead = rms_by_lead(e)
        result = ConvertResult(
            format=fmt, artifact=name, model=model.name, model_sha256=model.sha256, target=plan.target, runtime=plan.runtime,
            budget_bytes=plan.budget_bytes, planned_weight_bytes=plan.weight_bytes, weight_bytes=weight_bytes,
            file_bytes=artifact.stat().st_size, fp32_weight_bytes=plan.fp32_bytes, fp32_file_bytes=len(model.bytes),
            tensors=tuple(checks), all_match=not bad, horizon=horizon, contexts=contexts.describe(),
            one_step_error=finite_or_none([by_lead[0]])[0], error_by_lead=finite_or_none(by_lead),
            simulated_error_by_lead=finite_or_none(rms_by_lead(e_sim)),
            artifact_vs_simulated=finite_or_none([np.max(e_as)])[0], first_nonfinite_step=got.first_nonfinite,
            seconds=time.perf_counter() - t0, versions={**_versions(), **roll_kw.get("versions", {})}, notes=tuple(notes),
            activations=facts.get("activations"), arena_bytes=facts.get("arena_bytes"),
            arena_bytes_reported=facts.get("arena_bytes_reported"), ram_budget_bytes=facts.get("ram_budget_bytes"),
        )
        result.save(work / "convert.json")
        out.mkdir(parents=True, exist_ok=True)
        for f in (artifact, work / "convert.json"):  # converters leave other files (op configs) behind
            os.replace(f, out / f.name)
        return result
    finally:
        shutil.rmtree(work, ignore_errors=True)
