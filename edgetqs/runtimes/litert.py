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
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quantize import Precision
from ..errors import Hint, OptionalDependencyError
from .base import ConvertError

# the weight input of the ops ai-edge-quantizer quantizes
WEIGHT_OPS = {"FULLY_CONNECTED": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "BATCH_MATMUL": 1, "EMBEDDING_LOOKUP": 1, "CONV_3D": 1}


def onnx_route(target: Any) -> str | None:
    """The ONNX Runtime format the target also runs (advice never names a format the target refuses), or None;
    any when there is no target."""
    runs = None if target is None else tuple(target.runtimes)
    return next((f for f in ("ort", "ort-mobile") if runs is None or f in runs), None)


# when no ONNX Runtime route is offered: valid for any target (a target that runs only tflm refuses --format ort)
_ADVICE = (
    "replace the op in the model before exporting (an equivalent of MatMul/Add/Mul/Tanh/Sigmoid converts), "
    "or plan for a target that runs ONNX Runtime (its runtimes include ort)"
)


def no_route_advice(target: Any) -> str:
    """What to say after a TFLite route failure when the target offers no ONNX Runtime format to fall back to."""
    return (no_route(target) if target is not None else "") + f"; {_ADVICE}"


def route_hint(target: Any, key: str) -> Hint | None:
    """Advice to take the ONNX Runtime route instead, when the target runs it."""
    fmt = onnx_route(target)
    if fmt is None:
        return None
    return Hint(key, ("--format", fmt), say="use {args} for this model (`edgetqs convert`: replan with --runtime " + fmt + " first)")


def no_route(target: Any) -> str:
    """What to say when the target runs no ONNX Runtime format."""
    return f"; target '{target.name}' runs only {', '.join(target.runtimes)}, so this model cannot be deployed there as it is"


def our_node(model: Any, reported: str) -> tuple[str, str] | None:
    """(name, op type) of the node of our graph that onnx2tf reports as ``reported``, or None. onnx2tf drops
    the exporters' leading '/' and may prefix a scope ('/rnn/GRU' is reported as 'wa/rnn/GRU'): the longest
    of our names that ends the reported one at a '/' boundary."""
    best: tuple[str, str] | None = None
    for n in model.proto.graph.node:
        name = n.name.lstrip("/")
        if name and (reported == name or reported.endswith("/" + name)) and (best is None or len(name) > len(best[0].lstrip("/"))):
            best = (n.name, n.op_type)
    return best


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


def consumers(sg: Any) -> dict[int, list[tuple[Any, int]]]:
    """Tensor index -> (op, input position) of every op of the subgraph that reads it."""
    found: dict[int, list[tuple[Any, int]]] = {}
    for op in sg.operators:
        for pos, i in enumerate(op.inputs):
            if i >= 0:
                found.setdefault(int(i), []).append((op, pos))
    return found


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


def cache_file(model: Any, suffix: str) -> Path:
    """Where a TFLite graph converted from ``model`` is cached: keyed by the graph's bytes and the converters' versions."""
    import hashlib

    key = hashlib.sha256(model.bytes + repr(sorted(versions(("onnx2tf", "tensorflow")).items())).encode()).hexdigest()[:32]
    root = Path(os.environ.get("EDGETQS_CACHE_DIR", Path.home() / ".cache" / "edgetqs")).expanduser()
    return root / "tflite" / f"{key}.{suffix}"


def cache_bytes(cached: Path, data: bytes) -> None:
    """Write a cache entry atomically (a concurrent reader sees the old file or the whole new one)."""
    cached.parent.mkdir(parents=True, exist_ok=True)
    tmp = cached.with_name(f".{cached.name}.{os.getpid()}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, cached)


def cached_float_tflite(model: Any, work: Path, target: Any = None) -> bytes:
    """`float_tflite`'s file, cached on disk like `tflm.signature_tflite`: the tflite planner prices from this graph
    and convert quantizes it, so one onnx2tf run serves both (``work``: its scratch folder on a miss)."""
    cached = cache_file(model, "float32.tflite")
    if cached.is_file():
        return cached.read_bytes()
    data = float_tflite(model, work, target).read_bytes()
    cache_bytes(cached, data)
    return data


def stored_bytes(m: Any) -> int:
    """Every constant byte a TFLite ``ModelT`` stores, counted as the read-back counts them (data and quantization
    parameters, per tensor)."""
    total = 0
    for t in m.subgraphs[0].tensors:
        b = m.buffers[t.buffer]
        if b.data is not None and len(b.data):
            total += len(b.data) + qbytes(t)
    return total


def float_tflite(model: Any, work: Path, target: Any = None) -> Path:
    """ONNX -> float32 TFLite with onnx2tf in a child process, at the model's fixed batch, else batch 1.

    First with the input layout kept (``-kat``); onnx2tf fails that way on some graphs (GRU, conv
    after a reshape), so then again with its default NCHW -> NHWC layout (`LiteRTSession` transposes).
    A failure names the op and advises the ONNX Runtime route only when ``target`` runs it.
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
        hint = route_hint(target, "tflite-route-op")
        raise ConvertError(
            f"onnx2tf (the ONNX -> TFLite route) has no converter for the op {op} (ONNX node{'s' if len(nodes) > 1 else ''} "
            f"{', '.join(repr(x) for x in nodes[:3])}) and edgetqs has no rewrite for it" + ("" if hint else no_route_advice(target)),
            hint=hint,
        )
    failed = re.findall(r"onnx_op_name:\s*(\S+)", logs[-1]) or re.findall(r"onnx_op_name:\s*(\S+)", logs[0])
    found = our_node(model, failed[-1]) if failed else None
    where = (
        (f"ONNX node '{found[0]}' ({found[1]})" if found else f"ONNX node '{failed[-1]}' (a node of its simplified graph)")
        if failed
        else "the model"
    )
    last = [ln.strip() for ln in logs[-1].splitlines() if ln.strip().startswith(("ValueError", "TypeError", "NotImplementedError"))]
    hint = route_hint(target, "tflite-route-node")
    raise ConvertError(
        f"onnx2tf (the ONNX -> TFLite route) cannot convert {where}, with or without keeping the input layout"
        + (f": {last[-1][:300]}" if last else "")
        + ("" if hint else no_route_advice(target)),
        hint=hint,
    )


@dataclass(frozen=True)
class Match:
    """Where one planned tensor (or one gate piece of it) lives in the float TFLite graph.

    Attributes:
        tensor: the planned tensor's name (the source of a split recurrent weight).
        piece: the initializer in the prepared ONNX graph (== ``tensor`` unless split).
        precision: what this piece is stored at (the plan's, mapped onto a piece by `prepare.piece_precision`).
        index: the TFLite tensor index.
        scope: the consuming op's scope (its output names), the key of ai-edge-quantizer's recipes.
        op: the consuming op's builtin name.
        pos: the input position in that op.
        factor: the converter stored the values times this factor (a constant multiplier folded into the
            weight, as TensorFlow's converter folds ``0.1 * conv(x)``); 1.0 when stored as they are.
    """

    tensor: str
    piece: str
    precision: Precision
    index: int
    scope: str
    op: str
    pos: int
    factor: float = 1.0
    users: int = 1
    uses: tuple[tuple[str, str, int], ...] = ()  # every consumer: (scope, op, input position); an unrolled cell shares a weight

    @property
    def weight_scopes(self) -> list[tuple[str, str]]:
        """(scope, op) of every consumer: each needs the tensor's recipe, or the quantizer applies its default to the shared tensor."""
        return [(sc, op) for sc, op, _ in (self.uses or ((self.scope, self.op, self.pos),))]

    @property
    def only_weight_uses(self) -> bool:
        """Every consumer takes it as the weight input of an op with its own weight scales."""
        return all(WEIGHT_OPS.get(op) == pos for _, op, pos in (self.uses or ((self.scope, self.op, self.pos),)))

    @property
    def is_weight(self) -> bool:
        """The weight input of an op ai-edge-quantizer quantizes with its own scales."""
        return WEIGHT_OPS.get(self.op) == self.pos


def _same(vals: np.ndarray, key: np.ndarray) -> bool:
    return bool(np.allclose(np.sort(vals), key, rtol=1e-6, atol=1e-8))


def _scaled(vals: np.ndarray, w: np.ndarray) -> float | None:
    """The factor c with vals == c * w up to float rounding (a multiplier folded in), else None."""
    aw, av = float(np.max(np.abs(w))), float(np.max(np.abs(vals)))
    if aw == 0 or av == 0:
        return None
    kw = np.sort(w / aw)
    for sign in (1.0, -1.0):
        if np.allclose(np.sort(sign * vals / av), kw, rtol=1e-5, atol=1e-6):
            c = sign * av / aw
            if np.allclose(vals.astype(np.float64), c * w.astype(np.float64), rtol=1e-4, atol=1e-6 * av):
                return c
    return None


def match_planned(prep: Any, plan: Any, m: Any, sg: Any, ops: dict[int, str], skip_fp32: bool) -> tuple[list[Match], list[tuple[str, str]]]:
    """Find each planned tensor (each gate piece of a split recurrent weight) in the float TFLite graph by
    content: first as the same multiset of values (layouts are permuted, values are not), then as a
    multiple of them (a constant multiplier folded in; per-channel and per-tensor integers are the same
    then). Returns the matches and the (tensor, piece) pairs not found (folded or transformed otherwise)."""
    from ..core.quantize import Layout, effective
    from .prepare import piece_precision

    by_size: dict[int, list[tuple[int, np.ndarray]]] = {}
    for idx, vals in constants(m, sg):
        by_size.setdefault(vals.size, []).append((idx, vals))
    readers = consumers(sg)
    used: set[int] = set()
    found: list[Match] = []
    missing: list[tuple[str, str]] = []
    for t in plan.tensors:
        if skip_fp32 and t.precision.kind == "float" and t.precision.bits == 32:
            continue
        src_layout = prep.source.layout(t.name) if t.name in prep.source_weights else None
        pieces = {p.name: p for p in prep.pieces.get(t.name, ())}
        for piece, arr in prep.values(t.name):
            w = arr.astype(np.float32).ravel()
            key = np.sort(w)
            cands = [(idx, vals) for idx, vals in by_size.get(w.size, []) if idx not in used]
            hit = next(((idx, 1.0) for idx, vals in cands if _same(vals, key)), None)
            if hit is None:
                hit = next(((idx, c) for idx, vals in cands if (c := _scaled(vals, w)) is not None), None)
            if hit is None:
                missing.append((t.name, piece))
                continue
            idx, factor = hit
            used.add(idx)
            users = readers.get(idx, [])
            op, pos = users[0] if users else (None, -1)
            if piece in pieces:
                p = effective(
                    piece_precision(t.precision, src_layout or Layout(0, None), pieces[piece]), arr.shape, Layout(arr.ndim - 1, 0)
                )
            else:
                p = effective(t.precision, arr.shape, src_layout or Layout(0, None))
            found.append(
                Match(
                    t.name,
                    piece,
                    p,
                    idx,
                    scope(sg, op) if op is not None else "",
                    op_name(m, op, ops) if op is not None else "",
                    pos,
                    factor,
                    len(users),
                    tuple((scope(sg, o), op_name(m, o, ops), ps) for o, ps in users),
                )
            )
    return found, missing


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
