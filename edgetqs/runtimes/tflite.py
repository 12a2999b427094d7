"""TFLite artifacts: ONNX -> float TFLite (onnx2tf 1.28.8) -> ai-edge-quantizer recipe from the plan.

onnx2tf loses ONNX initializer names (tensors get TF op names) and may transform constants, so a
planned tensor is found in the float TFLite graph by content (its multiset of values: layouts are
permuted, values are not), and a planned tensor that cannot be found is an error, not a guess. The
recipe quantizes each matched weight weight-only (int8/int4, per tensor or per channel; fp16 by float
casting) through a regex on its consuming op's scope (the op's output tensor names). The result
is read back from the flatbuffer, because the interpreter reports INT4 as int8.
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quantize import Storage, effective
from .base import Converted, ConvertError, ConvertJob, RuntimeInfo
from .convert import TensorCheck
from .litert import (
    WEIGHT_OPS,
    constants,
    float_tflite,
    graph_batch,
    io_dicts,
    names,
    op_name,
    qbytes,
    quiet_tensorflow,
    refuse_other_rounding,
    require,
    schema,
    scope,
    versions,
)

_ALGO_FLOAT = "float_casting"
_PACKAGES = ("onnx2tf", "ai-edge-quantizer", "ai-edge-litert", "tensorflow")


def _match(model: Any, plan: Any, m: Any, sg: Any, ops: dict[int, str]) -> dict[str, tuple[str, str, int]]:
    """Planned (non-fp32) tensor -> (op scope, op name, input position) in the float TFLite graph."""
    consts = constants(m, sg)
    consumers: dict[int, list] = {}
    for op in sg.operators:
        for pos, i in enumerate(op.inputs):
            if i >= 0:
                consumers.setdefault(i, []).append((op, pos))
    used: set[int] = set()
    found = {}
    for t in plan.tensors:
        p = t.precision
        if p.kind == "float" and p.bits == 32:
            continue
        w = model.weight_array(t.name).astype(np.float32).ravel()
        key = np.sort(w)
        cands = [
            idx for idx, vals in consts if idx not in used and vals.size == w.size and np.allclose(np.sort(vals), key, rtol=1e-6, atol=1e-8)
        ]
        if not cands:
            raise ConvertError(
                f"planned tensor '{t.name}' ({t.precision}) has no counterpart with the same values in the TFLite graph onnx2tf wrote "
                "(it was folded or transformed, e.g. a division turned into a multiplication); pin it to fp32 and replan"
            )
        idx = cands[0]
        users = consumers.get(idx, [])
        if len(users) != 1 or op_name(m, users[0][0], ops) not in WEIGHT_OPS or users[0][1] != WEIGHT_OPS[op_name(m, users[0][0], ops)]:
            what = ", ".join(f"{op_name(m, o, ops)} input {pos}" for o, pos in users) or "nothing"
            raise ConvertError(
                f"planned tensor '{t.name}' ({t.precision}) feeds {what} in the TFLite graph; ai-edge-quantizer quantizes "
                f"only the weight input of {', '.join(sorted(WEIGHT_OPS))}: pin it to fp32 and replan"
            )
        used.add(idx)
        op, pos = users[0]
        found[t.name] = (scope(sg, op), op_name(m, op, ops), pos)
    return found


def _recipe(qt: Any, op_scope: str, op: str, p: Any) -> None:
    from ai_edge_quantizer import qtyping

    regex = "^" + re.escape(op_scope) + "$"
    name = qtyping.TFLOperationName[op]
    if p.kind == "float":
        cfg = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        qt.update_quantization_recipe(regex=regex, operation_name=name, op_config=cfg, algorithm_key=_ALGO_FLOAT)
        return
    gran = {"tensor": qtyping.QuantGranularity.TENSORWISE, "channel": qtyping.QuantGranularity.CHANNELWISE}.get(p.granularity)
    if gran is None or p.bits not in (4, 8):
        raise ConvertError(f"precision {p.name} has no TFLite weight-only form here; use int8/int4 per tensor or per channel, or fp16")
    qt.add_weight_only_config(regex=regex, operation_name=name, num_bits=p.bits, granularity=gran)


def _readback(buf: bytes, matched: dict[str, tuple[str, str, int]]) -> tuple[dict[str, tuple[str, int]], int]:
    """Stored precision and bytes of each matched tensor, and all weight bytes of the file."""
    fb = schema()
    ops, types = names(fb)
    m = fb.ModelT.InitFromPackedBuf(buf, 0)
    sg = m.subgraphs[0]
    by_scope = {scope(sg, op): op for op in sg.operators}
    producer = {o: op for op in sg.operators for o in op.outputs}

    out = {}
    for name, (op_scope, _, pos) in matched.items():
        op = by_scope.get(op_scope)
        if op is None:
            out[name] = ("missing", 0)
            continue
        src = sg.tensors[op.inputs[pos]]
        prod = producer.get(op.inputs[pos])
        if prod is not None and op_name(m, prod, ops) == "DEQUANTIZE":
            src = sg.tensors[prod.inputs[0]]
        b = m.buffers[src.buffer]
        nbytes = (0 if b.data is None else len(b.data)) + qbytes(src)
        kind = types.get(src.type, "?")
        if kind in ("INT8", "INT4"):
            n = len(src.quantization.scale) if src.quantization is not None and src.quantization.scale is not None else 0
            out[name] = (f"int{8 if kind == 'INT8' else 4}-{'tensor' if n == 1 else 'channel'}", nbytes)
        elif kind == "FLOAT16":
            out[name] = ("fp16", nbytes)
        elif kind == "FLOAT32":
            out[name] = ("fp32", nbytes)
        else:
            out[name] = (kind.lower(), nbytes)
    total = 0
    for t in sg.tensors:
        b = m.buffers[t.buffer]
        if b.data is not None and len(b.data):
            total += len(b.data) + qbytes(t)
    return out, total


class TfliteRuntime(RuntimeInfo):
    """LiteRT (TFLite): onnx2tf's float graph with ai-edge-quantizer's weight-only recipe from the plan."""

    def convert(self, job: ConvertJob) -> Converted:
        require(
            "tflite",
            "converting to TFLite",
            (("onnx2tf", "onnx2tf"), ("ai_edge_quantizer", "ai-edge-quantizer"), ("ai_edge_litert", "ai-edge-litert")),
        )
        quiet_tensorflow()
        refuse_other_rounding(job)
        from ai_edge_quantizer import quantizer

        from ..ondevice.runners import LiteRunner

        model, plan, work = job.model, job.plan, job.work
        fb = schema()
        ops, _ = names(fb)
        float_path = float_tflite(model, work)
        fbuf = float_path.read_bytes()
        fm = fb.ModelT.InitFromPackedBuf(fbuf, 0)
        matched = _match(model, plan, fm, fm.subgraphs[0], ops)
        precision = {t.name: t.precision for t in plan.tensors}
        if matched:
            qt = quantizer.Quantizer(str(float_path))
            for tname, (op_scope, op, _) in matched.items():
                _recipe(qt, op_scope, op, precision[tname])
            with contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints a size summary
                buf = bytes(qt.quantize().quantized_model)
        else:
            buf = fbuf
        artifact = work / job.file_name
        artifact.write_bytes(buf)
        stored, total = _readback(buf, matched)
        checks = []
        for t in plan.tensors:
            p = effective(t.precision, model.weight_array(t.name).shape, model.layout(t.name))
            if t.name in stored:
                found, nbytes = stored[t.name]
                checks.append(TensorCheck(name=t.name, planned=p.name, found=found, match=found == p.name, bytes=nbytes))
            else:  # planned fp32: stays float in the graph onnx2tf wrote (possibly transformed or fused)
                checks.append(TensorCheck(name=t.name, planned=p.name, found="fp32", match=p.name == "fp32", bytes=t.bytes))
        shutil.rmtree(work / "onnx2tf", ignore_errors=True)
        (work / "float_input.onnx").unlink(missing_ok=True)
        ins, outs = io_dicts(model)
        notes = [
            f"float TFLite from onnx2tf at batch {graph_batch(job.model)}; {len(matched)} tensors quantized weight-only by ai-edge-quantizer"
        ]
        return Converted(artifact, checks, total, LiteRunner(buf, ins, outs), notes=notes, versions=versions(_PACKAGES))

    def open(self, artifact: Path, model: Any, facts: dict[str, Any]) -> Any:
        from ..ondevice.runners import LiteRunner

        ins, outs = io_dicts(model)
        return LiteRunner(str(artifact), ins, outs)

    def validate(self, artifact: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            return  # the device reports it; the host cannot parse TFLite without the extra
        Interpreter(model_content=artifact.read_bytes())

    def job(self, artifact: Path, io: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        return {"runner": self.runner}

    def constant_states(self, artifact: Path, constants: dict[str, Any]) -> dict[str, str]:
        """onnx2tf renames constants: each is looked for by content among the file's float32 buffers (the
        quantizer's recipe names only planned weights, so a constant onnx2tf kept is still float32)."""
        fb = schema()
        m = fb.ModelT.InitFromPackedBuf(artifact.read_bytes(), 0)
        from . import litert

        pool = [np.sort(vals) for _, vals in litert.constants(m, m.subgraphs[0])]
        out = {}
        for name, want in constants.items():
            key = np.sort(np.asarray(want, np.float32).ravel())
            hit = any(v.size == key.size and np.array_equal(v, key) for v in pool)
            out[name] = "exact" if hit else "folded"
        return out


RUNTIME = TfliteRuntime(
    name="tflite",
    description="LiteRT / TFLite (weight-only int8/int4 per tensor or channel, fp16)",
    suffix=".tflite",
    accepts=("tflite",),
    storage=Storage(scale_bytes=12, wide_int_bytes=4, wide_int_overhead=12),
    extra="tflite",
    device_packages="ai-edge-litert (or tflite-runtime)",
    runner="litert",
)
