"""TFLite artifacts: ONNX -> float TFLite (onnx2tf 1.28.8) -> ai-edge-quantizer recipe from the plan.

onnx2tf loses ONNX initializer names (tensors get TF op names) and may transform constants, so a
planned tensor is found in the float TFLite graph by content (its multiset of values: layouts are
permuted, values are not), and a planned tensor that cannot be found is an error, not a guess. The
recipe quantizes each matched weight weight-only (int8/int4, per tensor or per channel; fp16 by float
casting) through a regex on its consuming op's scope (the op's output tensor names). The result
is read back from the flatbuffer, because the interpreter reports INT4 as int8.

onnx2tf rewrites its input file in place, so it is always given a copy.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

from ..errors import OptionalDependencyError

# TensorFlow's C++ logging (imported by ai-edge-quantizer and the converters) would flood the terminal
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("GLOG_minloglevel", "3")
from ..quantize import effective, parse_precision
from ..rollout import Rollout
from . import ConvertError, TensorCheck

_ALGO_FLOAT = "float_casting"
_WEIGHT_OPS = {"FULLY_CONNECTED": 1, "CONV_2D": 1, "DEPTHWISE_CONV_2D": 1, "BATCH_MATMUL": 1, "EMBEDDING_LOOKUP": 1, "CONV_3D": 1}


def _require() -> None:
    for mod, pkg in (("onnx2tf", "onnx2tf"), ("ai_edge_quantizer", "ai-edge-quantizer"), ("ai_edge_litert", "ai-edge-litert")):
        try:
            __import__(mod)
        except ImportError:
            raise OptionalDependencyError(pkg, "tflite", "converting to TFLite") from None


def _schema():
    from ai_edge_litert import schema_py_generated as schema

    return schema


def _names(schema) -> tuple[dict[int, str], dict[int, str]]:
    ops = {v: k for k, v in vars(schema.BuiltinOperator).items() if not k.startswith("_")}
    types = {v: k for k, v in vars(schema.TensorType).items() if not k.startswith("_")}
    return ops, types


def _op_name(m, op, ops: dict[int, str]) -> str:
    code = m.operatorCodes[op.opcodeIndex]
    return ops.get(max(code.builtinCode, code.deprecatedBuiltinCode), "CUSTOM")


def _scope(sg, op) -> str:
    names = [sg.tensors[i].name.decode() for i in op.outputs if i >= 0]
    return ";".join(names) + ";"


def batch1_bytes(model) -> bytes:
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
    try:
        m = onnx.shape_inference.infer_shapes(m)
    except Exception:  # noqa: BLE001 - onnx raises several types; onnx2tf infers shapes itself then
        pass
    return m.SerializeToString()


def float_tflite(model, work: Path) -> Path:
    """ONNX -> float32 TFLite with onnx2tf in a child process, batch fixed to 1.

    First with the input layout kept (``-kat``); onnx2tf fails that way on some graphs (GRU, conv
    after a reshape), so then again with its default NCHW -> NHWC layout (`LiteRTSession` transposes).
    """
    src = work / "float_input.onnx"
    logs = []
    for keep in (True, False):
        src.write_bytes(batch1_bytes(model))  # onnx2tf simplifies and overwrites its input file
        out = work / "onnx2tf"
        shutil.rmtree(out, ignore_errors=True)
        cmd = [sys.executable, "-m", "onnx2tf", "-i", str(src), "-o", str(out), "-b", "1", "-n", "-coion"]
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
        raise ConvertError(f"onnx2tf (the ONNX -> TFLite route) has no converter for the op {op} (ONNX node{'s' if len(nodes) > 1 else ''} "
                           f"{', '.join(repr(x) for x in nodes[:3])}); use --format ort or ort-mobile for this model")
    failed = re.findall(r"onnx_op_name:\s*(\S+)", logs[-1]) or re.findall(r"onnx_op_name:\s*(\S+)", logs[0])
    ops_by_name = {n.name: n.op_type for n in model.proto.graph.node}
    where = f"ONNX node '{failed[-1]}' ({ops_by_name.get(failed[-1], 'unknown op')})" if failed else "the model"
    last = [ln.strip() for ln in logs[-1].splitlines() if ln.strip().startswith(("ValueError", "TypeError", "NotImplementedError"))]
    raise ConvertError(f"onnx2tf (the ONNX -> TFLite route) cannot convert {where}, with or without keeping the input layout"
                       + (f": {last[-1][:300]}" if last else "") + "; use --format ort or ort-mobile for this model")


def _constants(m, sg) -> list[tuple[int, np.ndarray]]:
    out = []
    for idx, t in enumerate(sg.tensors):
        b = m.buffers[t.buffer]
        if b.data is None or len(b.data) == 0 or t.type != 0:  # 0: FLOAT32
            continue
        out.append((idx, np.frombuffer(bytes(b.data), dtype=np.float32)))
    return out


def _match(model, plan, m, sg, ops) -> dict[str, tuple[str, str, int]]:
    """Planned (non-fp32) tensor -> (op scope, op name, input position) in the float TFLite graph."""
    consts = _constants(m, sg)
    consumers: dict[int, list] = {}
    for op in sg.operators:
        for pos, i in enumerate(op.inputs):
            if i >= 0:
                consumers.setdefault(i, []).append((op, pos))
    used: set[int] = set()
    found = {}
    for t in plan.tensors:
        p = parse_precision(t.precision)
        if p.kind == "float" and p.bits == 32:
            continue
        w = model.weight_array(t.name).astype(np.float32).ravel()
        key = np.sort(w)
        cands = [idx for idx, vals in consts if idx not in used and vals.size == w.size and np.allclose(np.sort(vals), key, rtol=1e-6, atol=1e-8)]
        if not cands:
            raise ConvertError(
                f"planned tensor '{t.name}' ({t.precision}) has no counterpart with the same values in the TFLite graph onnx2tf wrote "
                "(it was folded or transformed, e.g. a division turned into a multiplication); pin it to fp32 and replan"
            )
        idx = cands[0]
        users = consumers.get(idx, [])
        if len(users) != 1 or _op_name(m, users[0][0], ops) not in _WEIGHT_OPS or users[0][1] != _WEIGHT_OPS[_op_name(m, users[0][0], ops)]:
            what = ", ".join(f"{_op_name(m, o, ops)} input {pos}" for o, pos in users) or "nothing"
            raise ConvertError(f"planned tensor '{t.name}' ({t.precision}) feeds {what} in the TFLite graph; ai-edge-quantizer quantizes "
                               f"only the weight input of {', '.join(sorted(_WEIGHT_OPS))}: pin it to fp32 and replan")
        used.add(idx)
        op, pos = users[0]
        found[t.name] = (_scope(sg, op), _op_name(m, op, ops), pos)
    return found


def _recipe(qt, scope: str, op_name: str, precision: str) -> None:
    from ai_edge_quantizer import qtyping

    p = parse_precision(precision)
    regex = "^" + re.escape(scope) + "$"
    op = qtyping.TFLOperationName[op_name]
    if p.kind == "float":
        cfg = qtyping.OpQuantizationConfig(weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
                                           compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=True)
        qt.update_quantization_recipe(regex=regex, operation_name=op, op_config=cfg, algorithm_key=_ALGO_FLOAT)
        return
    gran = {"tensor": qtyping.QuantGranularity.TENSORWISE, "channel": qtyping.QuantGranularity.CHANNELWISE}.get(p.granularity)
    if gran is None or p.bits not in (4, 8):
        raise ConvertError(f"precision {precision} has no TFLite weight-only form here; use int8/int4 per tensor or per channel, or fp16")
    qt.add_weight_only_config(regex=regex, operation_name=op, num_bits=p.bits, granularity=gran)


def _readback(buf: bytes, matched: dict[str, tuple[str, str, int]]) -> tuple[dict[str, tuple[str, int]], int]:
    """Stored precision and bytes of each matched tensor, and all weight bytes of the file."""
    schema = _schema()
    ops, types = _names(schema)
    m = schema.ModelT.InitFromPackedBuf(buf, 0)
    sg = m.subgraphs[0]
    by_scope = {_scope(sg, op): op for op in sg.operators}
    producer = {o: op for op in sg.operators for o in op.outputs}

    out = {}
    for name, (scope, _, pos) in matched.items():
        op = by_scope.get(scope)
        if op is None:
            out[name] = ("missing", 0)
            continue
        src = sg.tensors[op.inputs[pos]]
        prod = producer.get(op.inputs[pos])
        if prod is not None and _op_name(m, prod, ops) == "DEQUANTIZE":
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


def qbytes(t) -> int:
    """Bytes of a TFLite tensor's quantization parameters: float32 scales and int64 zero points."""
    q = t.quantization
    if q is None or q.scale is None:
        return 0
    return 4 * len(q.scale) + 8 * (0 if q.zeroPoint is None else len(q.zeroPoint))


def _nhwc_perm(rank: int) -> tuple[int, ...]:
    return (0,) + tuple(range(2, rank)) + (1,)


def _perm(onnx_shape, tfl_shape, name: str) -> tuple | None:
    want = (1,) + tuple(onnx_shape[1:])
    tfl_shape = tuple(int(d) for d in tfl_shape)
    if len(want) == len(tfl_shape) and all(a is None or a == b for a, b in zip(want, tfl_shape)):
        return None
    perm = _nhwc_perm(len(want))
    if len(want) >= 3 and all(want[p] is None or want[p] == b for p, b in zip(perm, tfl_shape)):
        return perm
    raise ConvertError(f"TFLite tensor '{name}' has shape {list(tfl_shape)}, which is neither the ONNX shape {list(want)} nor its NHWC form")


def layouts(model, in_shapes: list[tuple], out_shapes: list[tuple]) -> tuple[dict, dict]:
    """(input name -> NCHW->NHWC permutation or None, output name -> inverse permutation or None)
    from the batch-1 TFLite shapes beside the ONNX ones."""
    in_perm = {i.name: _perm(i.shape, s, i.name) for i, s in zip(model.inputs, in_shapes)}
    out_inv = {}
    for o, s in zip(model.outputs, out_shapes):
        perm = _perm(o.shape, s, o.name)
        out_inv[o.name] = None if perm is None else tuple(np.argsort(perm))
    return in_perm, out_inv


class Batch1Session:
    """Answers like an onnxruntime session (``run(output_names, feeds)``) for a batch-1 TFLite graph.

    The rows of a batch run one after the other. Where onnx2tf turned an NCHW tensor into NHWC,
    inputs are transposed on the way in and outputs on the way out. Subclasses set and get tensors.
    """

    def _layouts(self, model, in_shapes: list[tuple], out_shapes: list[tuple]) -> None:
        self.in_perm, self.out_inv = layouts(model, in_shapes, out_shapes)

    def _set(self, name: str, x: np.ndarray) -> None:
        raise NotImplementedError

    def _invoke(self) -> None:
        raise NotImplementedError

    def _get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def run(self, output_names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        rows: list[list[np.ndarray]] = [[] for _ in output_names]
        for b in range(batch):
            for name, arr in feeds.items():
                if name in self.in_perm:
                    perm = self.in_perm[name]
                    x = arr[b:b + 1]
                    self._set(name, np.ascontiguousarray(x if perm is None else x.transpose(perm)))
            self._invoke()
            for j, o in enumerate(output_names):
                y, inv = self._get(o), self.out_inv[o]
                rows[j].append(y.copy() if inv is None else np.ascontiguousarray(y.transpose(inv)))
        return [np.concatenate(r, axis=0) for r in rows]


class LiteRTSession(Batch1Session):
    """A LiteRT interpreter behind `Batch1Session`."""

    def __init__(self, model_content: bytes, model, threads: int = 1) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.it = Interpreter(model_content=model_content, num_threads=threads)
        self.it.allocate_tensors()
        ins, outs = self.it.get_input_details(), self.it.get_output_details()
        by_in, by_out = {d["name"]: d for d in ins}, {d["name"]: d for d in outs}
        # -coion keeps ONNX names; fall back on order
        din = [by_in.get(i.name, ins[k]) for k, i in enumerate(model.inputs)]
        dout = [by_out.get(o.name, outs[k]) for k, o in enumerate(model.outputs)]
        self.in_idx = {i.name: d["index"] for i, d in zip(model.inputs, din)}
        self.out_idx = {o.name: d["index"] for o, d in zip(model.outputs, dout)}
        self._layouts(model, [tuple(d["shape"]) for d in din], [tuple(d["shape"]) for d in dout])

    def _set(self, name: str, x: np.ndarray) -> None:
        self.it.set_tensor(self.in_idx[name], x)

    def _invoke(self) -> None:
        self.it.invoke()

    def _get(self, name: str) -> np.ndarray:
        return self.it.get_tensor(self.out_idx[name])


def _versions() -> dict:
    import importlib.metadata as md

    out = {}
    for pkg in ("onnx2tf", "ai-edge-quantizer", "ai-edge-litert", "tensorflow"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            pass
    return out


def convert_tflite(model, plan, fmt: str, work: Path, name: str, contexts, spec, horizon: int):
    """Returns (artifact path, per-tensor checks, weight bytes, rollout kwargs, notes)."""
    _require()
    from ai_edge_quantizer import quantizer

    schema = _schema()
    ops, _ = _names(schema)
    float_path = float_tflite(model, work)
    fbuf = float_path.read_bytes()
    fm = schema.ModelT.InitFromPackedBuf(fbuf, 0)
    matched = _match(model, plan, fm, fm.subgraphs[0], ops)
    if matched:
        qt = quantizer.Quantizer(str(float_path))
        for tname, (scope, op_name, _) in matched.items():
            _recipe(qt, scope, op_name, next(t.precision for t in plan.tensors if t.name == tname))
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints a size summary
            buf = bytes(qt.quantize().quantized_model)
    else:
        buf = fbuf
    artifact = work / name
    artifact.write_bytes(buf)
    stored, total = _readback(buf, matched)
    checks = []
    for t in plan.tensors:
        p = effective(parse_precision(t.precision), model.weight_array(t.name).shape, model.layout(t.name))
        if t.name in stored:
            found, nbytes = stored[t.name]
            checks.append(TensorCheck(t.name, p.name, found, found == p.name, nbytes))
        else:  # planned fp32: stays float in the graph onnx2tf wrote (possibly transformed or fused)
            checks.append(TensorCheck(t.name, p.name, "fp32", p.name == "fp32", t.bytes))
    session = LiteRTSession(buf, model)

    def runner(arrays, steps):
        return Rollout(model, spec, contexts.statics, session=session).run(arrays, steps)

    shutil.rmtree(work / "onnx2tf", ignore_errors=True)
    (work / "float_input.onnx").unlink(missing_ok=True)
    notes = [f"float TFLite from onnx2tf at batch 1; {len(matched)} tensors quantized weight-only by ai-edge-quantizer"]
    return artifact, checks, total, {"runner": runner, "versions": _versions()}, notes
