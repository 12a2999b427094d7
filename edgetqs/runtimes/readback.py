"""Read an artifact back and say at which precision each planned tensor is really stored.

The converters are not trusted: the file they wrote is parsed (the ONNX protobuf, or the ORT-format
flatbuffer) and every planned tensor is traced to what produces it: a float initializer, a Cast
from fp16, a DequantizeLinear from int8/int4 (scale shape and block_size give the granularity), or
the packed 4- or 8-bit input of a MatMulNBits node.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..errors import BadModelError

# onnx.TensorProto data types
_DT = {1: "float32", 10: "float16", 3: "int8", 2: "uint8", 22: "int4", 21: "uint4", 6: "int32", 7: "int64", 11: "float64"}
_BITS = {"float32": 32, "float16": 16, "int8": 8, "uint8": 8, "int4": 4, "uint4": 4, "int32": 32, "int64": 64, "float64": 64}


_INTS = ("int8", "int4", "uint8")


@dataclass
class Init:
    dtype: str
    dims: tuple[int, ...]
    nbytes: int
    raw: bytes | None = None  # the stored bytes of integer tensors (to compare their values with the plan's)


@dataclass
class Node:
    op: str
    inputs: list[str]
    outputs: list[str]
    attrs: dict[str, int] = field(default_factory=dict)


@dataclass
class GraphView:
    inits: dict[str, Init]
    nodes: list[Node]

    def producer(self, name: str) -> Node | None:
        return next((n for n in self.nodes if name in n.outputs), None)


def view_onnx(data: bytes) -> GraphView:
    import onnx

    m = onnx.load_from_string(data)
    inits = {}
    for i in m.graph.initializer:
        dt = _DT.get(i.data_type, str(i.data_type))
        n = 1
        for d in i.dims:
            n *= d
        # raw: packed bytes; typed fields (float_data, int32_data varints): what the file really holds
        nbytes = len(i.raw_data) if i.raw_data else max(i.ByteSize() - len(i.name) - 8, -(-n * _BITS.get(dt, 32) // 8))
        inits[i.name] = Init(dt, tuple(i.dims), nbytes, bytes(i.raw_data) if dt in _INTS and i.raw_data else None)
    nodes = [
        Node(n.op_type, list(n.input), list(n.output), {a.name: a.i for a in n.attribute if a.type == onnx.AttributeProto.INT})
        for n in m.graph.node
    ]
    return GraphView(inits, nodes)


def view_ort(data: bytes) -> GraphView:
    """Parse an ORT-format model with the flatbuffer schema that ships with onnxruntime."""
    from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

    if not InferenceSession.InferenceSession.InferenceSessionBufferHasIdentifier(data, 0):
        raise BadModelError("not an ORT-format model (flatbuffer identifier missing)")
    g = InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0).Model().Graph()
    inits = {}
    for k in range(g.InitializersLength()):
        t = g.Initializers(k)
        dt = _DT.get(t.DataType(), str(t.DataType()))
        dims = tuple(int(d) for d in t.DimsAsNumpy()) if t.DimsLength() else ()
        nbytes = t.RawDataLength()
        if nbytes == 0 and t.ExternalDataOffset() >= 0:
            n = 1
            for d in dims:
                n *= d
            nbytes = -(-n * _BITS.get(dt, 32) // 8)
        raw = t.RawDataAsNumpy().tobytes() if dt in _INTS and t.RawDataLength() else None
        inits[t.Name().decode()] = Init(dt, dims, nbytes, raw)
    nodes = []
    for k in range(g.NodesLength()):
        n = g.Nodes(k)
        attrs = {}
        for j in range(n.AttributesLength()):
            a = n.Attributes(j)
            attrs[a.Name().decode()] = int(a.I())
        nodes.append(
            Node(
                n.OpType().decode(),
                [n.Inputs(j).decode() for j in range(n.InputsLength())],
                [n.Outputs(j).decode() for j in range(n.OutputsLength())],
                attrs,
            )
        )
    return GraphView(inits, nodes)


def view(path: Path) -> GraphView:
    data = Path(path).read_bytes()
    return view_ort(data) if Path(path).suffix == ".ort" else view_onnx(data)


def stored_precision(g: GraphView, name: str, nbits_weight: dict[str, str] | None = None) -> tuple[str, int]:
    """(precision name, bytes stored for it) of one planned tensor; ('missing', 0) if not found. ``nbits_weight``:
    planned name -> the initializer a fused kernel (MatMulNBits, DynamicQuantizeMatMul) reads it from."""
    if name in g.inits:
        i = g.inits[name]
        return ("fp32" if i.dtype == "float32" else i.dtype), i.nbytes
    node = g.producer(name)
    if node is not None and node.op == "Cast" and node.inputs[0] in g.inits:
        i = g.inits[node.inputs[0]]
        return ("fp16" if i.dtype == "float16" else f"cast-from-{i.dtype}"), i.nbytes
    folded = _cast_times_scale(g, node)
    if folded is not None:  # Cast(int8) * scale: folded into a float weight at load (`ort_static._fold_at_load`)
        qi, si = folded
        one = len(si.dims) == 0 or int(np.prod(si.dims)) == 1
        return f"int8-{'tensor' if one else 'channel'}", qi.nbytes + si.nbytes
    if node is not None and node.op == "DequantizeLinear" and node.inputs[0] in g.inits:
        q, s = g.inits[node.inputs[0]], g.inits.get(node.inputs[1])
        bits = {"int8": 8, "int4": 4}.get(q.dtype)
        if bits is None or s is None:
            return f"dq-{q.dtype}", q.nbytes
        if node.attrs.get("block_size", 0) > 0:
            gran = f"block{node.attrs['block_size']}"
        elif len(s.dims) == 0 or (len(s.dims) == 1 and s.dims[0] == 1):
            gran = "tensor"
        else:
            gran = "channel"
        return f"int{bits}-{gran}", q.nbytes + s.nbytes
    key = (nbits_weight or {}).get(name)
    if key:
        for n in g.nodes:
            if n.op == "MatMulNBits" and len(n.inputs) > 2 and n.inputs[1] == key:
                b, s = g.inits[n.inputs[1]], g.inits[n.inputs[2]]
                return f"int{n.attrs.get('bits', 4)}-block{n.attrs.get('block_size', 0)}", b.nbytes + s.nbytes
            if n.op == "DynamicQuantizeMatMul" and len(n.inputs) > 2 and n.inputs[1] == key and n.inputs[2] in g.inits:
                b, s = g.inits[n.inputs[1]], g.inits[n.inputs[2]]
                one = len(s.dims) == 0 or (len(s.dims) == 1 and s.dims[0] == 1)
                return (f"int8-{'tensor' if one else 'channel'}" if b.dtype == "int8" else f"dq-{b.dtype}"), b.nbytes + s.nbytes
    return "missing", 0


def float_initializers(path: Path, names: set[str]) -> dict[str, np.ndarray]:
    """The stored values of the named float32 initializers of an ONNX or ORT-format file (absent: not stored
    under that name, or not as float32)."""
    data = Path(path).read_bytes()
    out: dict[str, np.ndarray] = {}
    if Path(path).suffix == ".ort":
        from onnxruntime.tools.ort_format_model.ort_flatbuffers_py.fbs import InferenceSession

        g = InferenceSession.InferenceSession.GetRootAsInferenceSession(data, 0).Model().Graph()
        for k in range(g.InitializersLength()):
            t = g.Initializers(k)
            name = t.Name().decode()
            if name in names and t.DataType() == 1 and t.RawDataLength():
                dims = tuple(int(d) for d in t.DimsAsNumpy()) if t.DimsLength() else ()
                out[name] = np.frombuffer(t.RawDataAsNumpy().tobytes(), np.float32).reshape(dims)
        return out
    import onnx
    from onnx import numpy_helper

    m = onnx.load_from_string(data)
    for i in m.graph.initializer:
        if i.name in names and i.data_type == 1:
            out[i.name] = numpy_helper.to_array(i)
    return out


def same_values(a: np.ndarray, b: np.ndarray) -> bool:
    """Equal shape and bit-identical values (infinities included; NaN equals NaN)."""
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    return a.shape == b.shape and bool(np.array_equal(a.view(np.uint32), b.view(np.uint32)))


def unpack4(raw: bytes, n: int, signed: bool) -> np.ndarray:
    """Two 4-bit values per byte, low nibble first (ONNX INT4 and MatMulNBits alike)."""
    b = np.frombuffer(raw, np.uint8)
    v = np.stack([b & 0x0F, b >> 4], axis=-1).reshape(-1)[:n].astype(np.int16)
    return np.where(v > 7, v - 16, v) if signed else v


def _cast_times_scale(g: GraphView, node: Node | None) -> tuple[Init, Init] | None:
    """(int8 initializer, scale initializer) when ``node`` is Mul(Cast(int8 initializer), scale initializer)."""
    if node is None or node.op != "Mul" or len(node.inputs) != 2 or node.inputs[1] not in g.inits:
        return None
    cast = g.producer(node.inputs[0])
    if cast is None or cast.op != "Cast" or not cast.inputs or cast.inputs[0] not in g.inits:
        return None
    q = g.inits[cast.inputs[0]]
    return (q, g.inits[node.inputs[1]]) if q.dtype == "int8" else None


def stored_integers(g: GraphView, name: str, nbits_weight: dict[str, str] | None = None) -> np.ndarray | None:
    """The integers stored for one planned tensor, in the order the file keeps them: a DequantizeLinear's
    input in the tensor's own shape, or a MatMulNBits weight (4 or 8 bits) as [N, K] (unsigned values minus its
    default zero point 2^(bits-1)). None when the tensor is not stored as integers."""
    node = g.producer(name)
    folded = _cast_times_scale(g, node)
    if folded is not None:
        q = folded[0]
        if q.raw is None:
            return None
        return np.frombuffer(q.raw, np.int8)[: int(np.prod(q.dims)) if q.dims else 1].astype(np.int16).reshape(q.dims)
    if node is not None and node.op == "DequantizeLinear" and node.inputs[0] in g.inits:
        q = g.inits[node.inputs[0]]
        if q.raw is None:
            return None
        n = int(np.prod(q.dims)) if q.dims else 1
        vals = np.frombuffer(q.raw, np.int8)[:n].astype(np.int16) if q.dtype == "int8" else unpack4(q.raw, n, signed=True)
        return vals.reshape(q.dims)
    key = (nbits_weight or {}).get(name)
    for nd in g.nodes if key else []:
        if nd.op == "DynamicQuantizeMatMul" and len(nd.inputs) > 1 and nd.inputs[1] == key:
            b = g.inits[key]
            if b.raw is None or b.dtype != "int8":
                return None
            return np.frombuffer(b.raw, np.int8)[: int(np.prod(b.dims))].astype(np.int16).reshape(b.dims)
        if nd.op == "MatMulNBits" and len(nd.inputs) > 2 and nd.inputs[1] == key:
            b = g.inits[nd.inputs[1]]
            n_out, k, bs, bits = nd.attrs["N"], nd.attrs["K"], nd.attrs["block_size"], nd.attrs.get("bits", 4)
            nb = -(-k // bs)
            if b.raw is None or bits not in (4, 8):
                return None
            if bits == 8:
                u = np.frombuffer(b.raw, np.uint8)[: n_out * nb * bs].astype(np.int16).reshape(n_out, nb * bs)[:, :k]
            else:
                u = unpack4(b.raw, n_out * nb * bs, signed=False).reshape(n_out, nb * bs)[:, :k]
            return u - (1 << (bits - 1))  # the default zero point
    return None
