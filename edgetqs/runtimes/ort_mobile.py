"""ORT-mobile artifacts (``.ort``): the ONNX Runtime graph serialised as a flatbuffer for mobile builds.

onnxruntime refuses INT4 initializers in ``.ort`` files, so 4-bit weights go through the
``com.microsoft.MatMulNBits`` kernel (Gemm is rewritten to MatMulNBits + Add first, since nothing
else handles Gemm; see `edgetqs.runtimes.ort.qdq_model`). The file is written by onnxruntime's
converter with its optimiser disabled: the default level folds fp16 Casts back into fp32 weights.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..core.quantize import Storage
from .base import Converted, ConvertError, ConvertJob, RuntimeInfo
from .ort import canonical_pricing, kernel_notes, nbits_min_k, qdq_model, read_back, validate_onnx

if TYPE_CHECKING:  # pragma: no cover
    from ..core.model import Model


def to_ort_format(onnx_path: Path, out_dir: Path) -> Path:
    """Write ``.ort`` with onnxruntime's converter, optimiser disabled (keeps fp16 storage)."""
    env = {**os.environ, "ORT_CONVERT_ONNX_MODELS_TO_ORT_OPTIMIZATION_LEVEL": "disable"}
    r = subprocess.run(
        [
            sys.executable,
            "-m",
            "onnxruntime.tools.convert_onnx_models_to_ort",
            str(onnx_path),
            "--output_dir",
            str(out_dir),
            "--optimization_style",
            "Fixed",
        ],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    written = out_dir / (onnx_path.stem + ".disable.ort")  # the converter names files after the optimisation level
    if r.returncode != 0 or not written.exists():
        tail = " ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
        raise ConvertError(f"onnxruntime's ORT-format converter failed on {onnx_path.name}: {tail}")
    ort_path = out_dir / (onnx_path.stem + ".ort")
    written.replace(ort_path)
    return ort_path


class OrtMobileRuntime(RuntimeInfo):
    def convert(self, job: ConvertJob) -> Converted:
        from ..ondevice.runners import OrtRunner

        ints = job.plan_integers()
        prep = job.prepared("ort-mobile")  # canonical graph, as for ort
        data, nbits, kernels = qdq_model(prep.model, job.plan, mobile=True, integers=ints, min_k=nbits_min_k(job.target))
        onnx_path = job.work / (job.model.name + ".onnx")
        onnx_path.write_bytes(data)
        artifact = to_ort_format(onnx_path, job.work)
        onnx_path.unlink()
        final = job.work / job.file_name
        if artifact != final:
            artifact.replace(final)
        checks, weight_bytes = read_back(final, prep.model, job.plan, nbits, ints)
        runner = OrtRunner(final.read_bytes(), ort_format=True, threads=0)
        facts = {"prepared": prep.record(), "weight_kernels": kernels}
        return Converted(final, checks, weight_bytes, runner, notes=prep.notes() + kernel_notes(kernels), facts=facts)

    def pricing(self, model: Model, activations: str, exact: bool = False, auto: bool = False) -> Any:
        return canonical_pricing(self.name, self.storage, model, activations)

    def open(self, artifact: Path, model: Model, facts: dict[str, Any]) -> Any:
        from ..ondevice.runners import OrtRunner

        return OrtRunner(str(artifact), ort_format=True, threads=0)

    def validate(self, artifact: Path) -> None:
        validate_onnx(artifact, ort_format=True)

    def job(self, artifact: Path, io: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        return {"runner": self.runner, "ort_format": True}


RUNTIME = OrtMobileRuntime(
    name="ort-mobile",
    description="ORT-mobile (.ort flatbuffer; 4-bit through MatMulNBits)",
    suffix=".ort",
    accepts=("ort-mobile", "ort"),
    storage=Storage(pad_int4_blocks=True),  # MatMulNBits stores K rounded up to whole blocks
)
