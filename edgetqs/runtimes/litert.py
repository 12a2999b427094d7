"""Shared by the TFLite routes: ONNX -> float TFLite with onnx2tf, and reading TFLite flatbuffers.

onnx2tf (1.28.8) runs in a child process on a batch-1 copy of the model (it rewrites its input file in
place, and misreads a 1-channel Conv1d while the batch is symbolic). Its output loses the ONNX
initializer names, so planned tensors are found by content (`constants`). The flatbuffer is read with
the schema that ships with ai-edge-litert, because the interpreter reports INT4 tensors as int8.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OptionalDependencyError
from .base import ConvertError

# the weight input of the ops ai-edge-quantizer quantizes
WEIGHT_OPS = {"FULLY_CONNECTED": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "BATCH_MATMUL": 1, "EMBEDDING_LOOKUP": 1, "CONV_3D": 1}


def refuse_other_rounding(job: Any) -> None:
    """ai-edge-quantizer rounds TFLite weights itself, so only round-to-nearest plans are realised exactly here."""
    if job.plan.rounding != "rtn":
        raise ConvertError(
            f"the plan uses {job.plan.rounding} rounding, whose integers the ort and ort-mobile formats store exactly; the TFLite routes "
            "round weights themselves (ai-edge-quantizer): replan with --rounding rtn for tflite/tflm, or convert to ort"
        )


def quiet_tensorflow() -> None:
    """TensorFlow's C++ logging (imported by ai-edge-quantizer and the converters) would flood the terminal."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    os.environ.setdefault("GLOG_minloglevel", "3")


def require(extra: str, feature: str, modules: tuple[tuple[str, str], ...]) -> None:
    """Raise `OptionalDependencyError` naming the extra when a module is missing (TensorFlow's logging is
    silenced first: importing these modules loads it)."""
    quiet_tensorflow()
    for mod, pkg in modules:
        try:
            __import__(mod)
        except ImportError:
            raise OptionalDependencyError(pkg, extra, feature) from None


def schema() -> Any:
    from ai_edge_litert import schema_py_generated as schema

    return schema


def names(schema: Any) -> tuple[dict[int, str], dict[int, str]]:
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return ops, types


def op_name(m: Any, op: Any, ops: dict[int, str]) -> str:
    code = m.operatorCodes[op.opcodeIndex]
    return ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def scope(sg: Any, op: Any) -> str:
    names = [sg.tensors[i].name.decode() for i in op.outputs if i >= 0]
    return ";".join(names) + ";"


def batch1_bytes(model: Any) -> bytes:
    """The model with its batch axis fixed to 1 and intermediate shapes re-inferred.

    onnx2tf's ``-b 1`` is not enough: with a symbolic batch in the graph's value_info it misreads the
    layout of a 1-channel Conv1d (Lorenz-96: "depth of output 48 is not a multiple of groups 44"),
    while the same graph exported with a static batch converts."""
    import onnx

    m = onnx.ModelProto()
    m.CopyFrom(model.proto)
    for v in list(m.graph.input) + list(m.graph.output):
        dims = v.type.tensor_type.shape.dim
        if len(dims) and not dims[0].HasField("dim_value"):
            dims[0].Clear()
            dims[0].dim_value = 1
    del m.graph.value_info[:]
    with contextlib.suppress(Exception):  # onnx raises several types; onnx2tf infers shapes itself then
        m = onnx.shape_inference.infer_shapes(m)
    return m.SerializeToString()


def graph_batch(model: Any) -> int:
    """The batch the TFLite graph gets: the model's fixed batch (its first input's dimension 0, when every input
    declares the same one), else 1 (a symbolic batch; the runners feed the rows one by one)."""
    dims = {i.shape[0] if i.shape else None for i in model.inputs}
    b = dims.pop() if len(dims) == 1 else None
    return b if isinstance(b, int) and b > 0 else 1


def float_tflite(model: Any, work: Path) -> Path:
    """ONNX -> float32 TFLite with onnx2tf in a child process, at the model's fixed batch, else batch 1.

    First with the input layout kept (``-kat``); onnx2tf fails that way on some graphs (GRU, conv
    after a reshape), so then again with its default NCHW -> NHWC layout (`LiteRTSession` transposes).
    """
    src = work / "float_input.onnx"
    logs = []
    for keep in (True, False):
        src.write_bytes(batch1_bytes(model))  # onnx2tf simplifies and overwrites its input file
        out = work / "onnx2tf"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "onnx2tf", "-i", str(src), "-o", str(out), "-b", str(graph_batch(model)), "-n", "-coion"]
        if keep:
            cmd += ["-kat", *[i.name for i in model.inputs]]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        path = next(out.glob("*_float32.tflite"), None) if out.exists() else None
        if r.returncode == 0 and path is not None:
            return path
        logs.append(r.stdout + r.stderr)
    missing = re.findall(r"No module named 'onnx2tf\.ops\.(\w+)'", logs[-1] + logs[0])
    if missing:
        op = missing[-1]
        nodes = [n.name or n.output[0] for n in model.proto.graph.node if n.op_type == op]
        raise ConvertError(
            f"onnx2tf (the ONNX -> TFLite route) has no converter for the op {op} (ONNX node{'s' if len(nodes) > 1 else ''} "
            f"{', '.join(repr(x) for x in nodes[:3])}); use --format ort or ort-mobile for this model"
        )
    failed = re.findall(r"onnx_op_name:\s*(\S+)", logs[-1]) or re.findall(r"onnx_op_name:\s*(\S+)", logs[0])
    ops_by_name = {n.name: n.op_type for n in model.proto.graph.node}
    where = f"ONNX node '{failed[-1]}' ({ops_by_name.get(failed[-1], 'unknown op')})" if failed else "the model"
    last = [ln.strip() for ln in logs[-1].splitlines() if ln.strip().startswith(("ValueError", "TypeError", "NotImplementedError"))]
    raise ConvertError(
        f"onnx2tf (the ONNX -> TFLite route) cannot convert {where}, with or without keeping the input layout"
        + (f": {last[-1][:300]}" if last else "")
        + "; use --format ort or ort-mobile for this model"
    )


def constants(m: Any, sg: Any) -> list[tuple[int, np.ndarray]]:
    out = []
    for idx, t in enumerate(sg.tensors):
        b = m.buffers[t.buffer]
        if b.data is None or len(b.data) == 0 or t.type != 0:  # 0: FLOAT32
            continue
        out.append((idx, np.frombuffer(bytes(b.data), dtype=np.float32)))
    return out


def qbytes(t: Any) -> int:
    """Bytes of a TFLite tensor's quantization parameters: float32 scales and int64 zero points."""
    q = t.quantization
    if q is None or q.scale is None:
        return 0
    return 4 * len(q.scale) + 8 * (0 if q.zeroPoint is None else len(q.zeroPoint))


def input_perms(model: Any, in_shapes: list[tuple[int, ...]]) -> dict[str, tuple[int, ...] | None]:
    """ONNX input name -> the NCHW -> NHWC permutation onnx2tf applied (None: layout kept)."""
    from ..ondevice.runners import _perm

    return {i.name: _perm(i.shape[1:], s, i.name) for i, s in zip(model.inputs, in_shapes)}


def io_dicts(model: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The model's inputs and outputs as the on-device runners describe them (shape without batch)."""
    return (
        [{"name": i.name, "shape": list(i.shape[1:]), "dtype": i.dtype} for i in model.inputs],
        [{"name": o.name, "shape": list(o.shape[1:])} for o in model.outputs],
    )


def versions(packages: tuple[str, ...]) -> dict[str, str]:
    import importlib.metadata as md

    out = {}
    for pkg in packages:
        with contextlib.suppress(md.PackageNotFoundError):
            out[pkg] = md.version(pkg)
    return out
