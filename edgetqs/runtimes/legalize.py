"""Op legalisation: rewrite the ONNX ops a runtime lacks into ops it has.

Framework exports carry ops that the TFLite route (onnx2tf 1.28.8 -> ai-edge-quantizer -> LiteRT) and
the TFLite-Micro route (the same, full integer, tflite-micro interpreter) refuse. `legalize` walks the
graph once and replaces each such node (or, for GELU exported as ``x*0.5*(1+Erf(x/sqrt2))``, each such
pattern) by a small subgraph of ops the route converts and runs. Which ops a route lacks is data
(`GAPS`), measured by converting one-op graphs on this machine with the real tools (see the table
comments); how each op is rewritten is a registered function (`RULES`). ``ort`` needs nothing.

What the rewrites keep: every weight initializer keeps its name and values, except the W/R/B/P tensors
of GRU/LSTM/RNN, which are split per gate into new initializers ``NAME__gate_z`` (W, R; transposed to
[in, hidden] for MatMul), ``NAME__Wb_z`` / ``NAME__Rb_z`` (B) and ``NAME__p_i`` (P). `origin_map` maps
each piece back to its source: ``piece.take(source_array)`` reproduces the piece from the original
tensor, so a converter that matches planned tensors by content can find them. A plan entry on a source
applies to each of its pieces with the same precision; per-channel on W or R (one channel per row of
[gates*hidden, in], a gate unit) becomes per-channel on each piece's output columns with the same
channels and the same scales; per-tensor becomes one scale per piece (finer: no more error, 4 bytes
more per extra piece). The bias pieces of a gate are added once (Wb + Rb, an Add of two constants that
the TFLite converter folds), so the TFLite graph holds their sum: keep B at fp32 (biases are).

Approximations and their bounds (float64 analysis over all reals; ``max_error`` of each `Rewrite`):
- GELU (exact, erf form) -> tanh form 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3))): |error| <= 4.8e-4.
- Erf -> tanh(z(a + b z^2)) with a = 2/sqrt(pi), b = 0.0894*a (the same curve): |error| <= 3.6e-4 (TFLM:
  only ops with integer kernels). Erf -> Abramowitz-Stegun 7.1.26 rational-exponential form: <= 1.5e-7
  (TFLite: float kernels; ~6e-7 in float32).
- Softplus -> relu(x) + p(u), u = sigmoid(-|x|), p a degree-4 fit of -log(1-u) on [0, 1/2]: <= 6.8e-5.
- An additive mask's -inf -> -30 (TFLM): a masked softmax weight becomes <= exp(-16) ~ 1.1e-7 instead of 0
  while a row's unmasked scores lie within 14 of the masked ones (a conditional bound, not a proof).
Every other rewrite is exact up to float rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import EdgetqsError

RUNTIMES = ("ort", "tflite", "tflm")
_DEFAULT_DOMAINS = ("", "ai.onnx")


class LegalizeError(EdgetqsError):
    """A graph cannot be legalised for a runtime (unknown runtime, a node a rewrite cannot handle)."""


# ---------------------------------------------------------------------------------------------------
# results


@dataclass(frozen=True)
class WeightPiece:
    """A new initializer cut from a recurrent op's weight: ``source[0, start:stop]``, transposed if said.

    Attributes:
        name: the new initializer's name (``SOURCE__gate_z`` ...).
        source: the original initializer's name.
        start: first row taken along axis 1 of the source (after index 0 on the direction axis).
        stop: one past the last row.
        transposed: the rows were transposed to [in, out] (MatMul layout).
    """

    name: str
    source: str
    start: int
    stop: int
    transposed: bool

    def take(self, source: np.ndarray) -> np.ndarray:
        """The piece's values, cut from the source tensor's values."""
        a = np.asarray(source)[0, self.start : self.stop]
        return np.ascontiguousarray(a.T) if self.transposed else a


@dataclass(frozen=True)
class Rewrite:
    """One applied rewrite.

    Attributes:
        rule: the registered rule that did it (``gelu_tanh``, ``gru_unroll`` ...).
        op: the op replaced (``Gelu``; contrib ops as ``com.microsoft.QuickGelu``).
        nodes: names of the nodes removed (a pattern removes several).
        replacement: what replaced them, in words.
        added: op type -> number of nodes added.
        max_error: analytic bound of the approximation's absolute error (0.0: exact up to rounding).
        pieces: initializers split from a recurrent op's weights.
    """

    rule: str
    op: str
    nodes: tuple[str, ...]
    replacement: str
    added: dict[str, int]
    max_error: float
    pieces: tuple[WeightPiece, ...] = ()

    def to_dict(self) -> dict:
        """JSON-ready form (for convert.json)."""
        return {
            "rule": self.rule,
            "op": self.op,
            "nodes": list(self.nodes),
            "replacement": self.replacement,
            "added": dict(self.added),
            "max_error": self.max_error,
            "pieces": [
                {"name": p.name, "source": p.source, "start": p.start, "stop": p.stop, "transposed": p.transposed} for p in self.pieces
            ],
        }


@dataclass(frozen=True)
class Unsupported:
    """A node a runtime lacks that no rule can rewrite."""

    op: str
    node: str
    reason: str

    def __str__(self) -> str:
        return f"{self.op} (node '{self.node}'): {self.reason}"


@dataclass(frozen=True)
class Deviation:
    """Largest difference between two graphs' outputs on the same random inputs.

    ``max_rel`` is normwise: max |a - b| / max |a| per output (elementwise relative error is
    meaningless near zeros), the largest over outputs; ``scale`` is the largest max |a|."""

    max_abs: float
    max_rel: float
    per_output: dict[str, float]
    scale: float
    n: int
    seed: int

    def to_dict(self) -> dict:
        """JSON-ready form (for convert.json)."""
        return {
            "max_abs": self.max_abs,
            "max_rel": self.max_rel,
            "per_output": dict(self.per_output),
            "scale": self.scale,
            "n": self.n,
            "seed": self.seed,
        }


# ---------------------------------------------------------------------------------------------------
# graph access and emission


def op_key(node: onnx.NodeProto) -> str:
    """``Gelu`` for default-domain ops, ``com.microsoft.QuickGelu`` for others."""
    return node.op_type if node.domain in _DEFAULT_DOMAINS else f"{node.domain}.{node.op_type}"


def _node_label(node: onnx.NodeProto) -> str:
    return node.name or (node.output[0] if node.output else node.op_type)


class GraphView:
    """What a rule may ask about the graph: constants, inferred shapes and types, producers,
    consumers, graph outputs, the default opset, and fresh (unused) names."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        self.proto = proto
        g = proto.graph
        self.opset = next((o.version for o in proto.opset_import if o.domain in _DEFAULT_DOMAINS), 1)
        graph_inputs = {i.name for i in g.input}
        # an initializer that is also a graph input is a default a feed may override: not a constant
        self.inits = {i.name: i for i in g.initializer if i.name not in graph_inputs}
        self.outputs = {o.name for o in g.output}
        self.producer: dict[str, onnx.NodeProto] = {}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        self.taken: set[str] = set(graph_inputs) | {i.name for i in g.initializer}
        for n in g.node:
            self.taken.add(n.name)
            for o in n.output:
                self.producer[o] = n
                self.taken.add(o)
            for i in n.input:
                self.consumers.setdefault(i, []).append(n)
        self.shapes: dict[str, tuple[int | None, ...]] = {}
        self.types: dict[str, int] = {}
        try:
            inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
        except Exception:  # noqa: BLE001 - onnx raises several types on graphs it cannot type (contrib ops)
            inferred = proto
        for v in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
            t = v.type.tensor_type
            self.types[v.name] = t.elem_type
            if t.HasField("shape"):
                self.shapes[v.name] = tuple(int(d.dim_value) if d.HasField("dim_value") else None for d in t.shape.dim)
        for i in g.initializer:
            self.shapes[i.name] = tuple(int(d) for d in i.dims)
            self.types[i.name] = i.data_type

    def const(self, name: str) -> np.ndarray | None:
        """The value of a constant tensor (an initializer or a Constant node's output), else None."""
        if name in self.inits:
            init = self.inits[name]
            if init.data_location == TensorProto.EXTERNAL:
                return None
            return numpy_helper.to_array(init)
        node = self.producer.get(name)
        if node is not None and node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS:
            for a in node.attribute:
                if a.name == "value":
                    return numpy_helper.to_array(a.t)
                if a.name in ("value_float", "value_floats", "value_int", "value_ints"):
                    return np.array(helper.get_attribute_value(a), dtype=np.float32 if "float" in a.name else np.int64)
        return None

    def used(self, name: str) -> bool:
        """Whether a node or the graph's outputs read the tensor."""
        return bool(name) and (name in self.outputs or bool(self.consumers.get(name)))

    def fresh(self, base: str) -> str:
        """``base``, or ``base_1``, ``base_2``... whichever no tensor or node of the graph uses yet (reserved)."""
        name, k = base, 1
        while name in self.taken:
            name, k = f"{base}_{k}", k + 1
        self.taken.add(name)
        return name

    def dtype(self, name: str) -> np.dtype:
        """The element type of a tensor (float32 when unknown)."""
        t = self.types.get(name, TensorProto.FLOAT)
        return np.dtype(helper.tensor_dtype_to_np_dtype(t)) if t else np.dtype(np.float32)


class Builder:
    """Emits the nodes and initializers of one replacement, with fresh names under the node's name.

    ``op(..., out=name)`` writes a given tensor name (the replaced node's output); constants take the
    dtype of the replaced node's input unless told otherwise."""

    def __init__(self, g: GraphView, base: str, dtype: np.dtype) -> None:
        self.g, self.base, self.dtype = g, base, dtype
        self.nodes: list[onnx.NodeProto] = []
        self.inits: list[TensorProto] = []

    def op(self, op_type: str, inputs: list[str], hint: str = "", out: str | None = None, **attrs: Any) -> str:
        tag = f"{self.base}/{hint or op_type}"
        out = out or self.g.fresh(tag)
        self.nodes.append(helper.make_node(op_type, inputs, [out], name=self.g.fresh(tag), **attrs))
        return out

    def const(self, value: np.ndarray | float, hint: str, dtype: np.dtype | None = None, name: str | None = None) -> str:
        arr = np.asarray(value, dtype=dtype if dtype is not None else self.dtype)
        name = name or self.g.fresh(f"{self.base}/{hint}")
        self.inits.append(numpy_helper.from_array(arr, name))
        return name

    def scalar(self, value: float, hint: str = "c") -> str:
        return self.const(np.array(value), hint)

    def mul(self, a: str, b: str, hint: str = "mul", out: str | None = None) -> str:
        return self.op("Mul", [a, b], hint, out)

    def add(self, a: str, b: str, hint: str = "add", out: str | None = None) -> str:
        return self.op("Add", [a, b], hint, out)

    def sub(self, a: str, b: str, hint: str = "sub", out: str | None = None) -> str:
        return self.op("Sub", [a, b], hint, out)

    def axes_op(self, op_type: str, x: str, axes: list[int], hint: str, out: str | None = None, **attrs: Any) -> str:
        """Squeeze/Unsqueeze (axes an input from opset 13) and ReduceMean (from opset 18)."""
        since = 18 if op_type.startswith("Reduce") else 13
        if self.g.opset >= since:
            return self.op(op_type, [x, self.const(np.array(axes, np.int64), "axes", dtype=np.dtype(np.int64))], hint, out, **attrs)
        return self.op(op_type, [x], hint, out, axes=axes, **attrs)

    def slice(self, x: str, start: int, stop: int, axis: int, hint: str = "slice", out: str | None = None) -> str:
        i64 = np.dtype(np.int64)
        return self.op(
            "Slice",
            [
                x,
                self.const(np.array([start], np.int64), "starts", i64),
                self.const(np.array([stop], np.int64), "ends", i64),
                self.const(np.array([axis], np.int64), "axes", i64),
            ],
            hint,
            out,
        )

    def added(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for n in self.nodes:
            out[n.op_type] = out.get(n.op_type, 0) + 1
        return out


@dataclass
class Replacement:
    """What a rule returns: the nodes it replaces, the builder holding the new nodes and constants, a
    description, the analytic error bound (0.0: exact), and for split weights the pieces and the
    initializers they replace (dropped once nothing reads them)."""

    remove: list[onnx.NodeProto]
    builder: Builder
    replacement: str
    max_error: float
    pieces: tuple[WeightPiece, ...] = ()
    drop_inits: tuple[str, ...] = ()


# a rule: (graph, node) -> Replacement; a sentence saying why it cannot rewrite this node (the node is then
# unsupported unless a later rule applies); or None: this node does not have the problem (an Add without
# an infinite constant), nothing to do
RuleFn = Callable[[GraphView, onnx.NodeProto], "Replacement | str | None"]


@dataclass(frozen=True)
class Rule:
    """A registered rewrite: ``fn(graph, node)`` returns a replacement, or a reason it does not apply."""

    name: str
    op: str
    fn: RuleFn
    doc: str


RULES: dict[str, Rule] = {}


def register(name: str, op: str, doc: str) -> Callable[[RuleFn], RuleFn]:
    """Register a rewrite rule under a unique name for the op key it starts from.

    Raises:
        ValueError: a rule of that name exists.
    """

    def deco(fn: RuleFn) -> RuleFn:
        if name in RULES:
            raise ValueError(f"a legalisation rule named '{name}' is already registered; choose another name")
        RULES[name] = Rule(name, op, fn, doc)
        return fn

    return deco


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    return {a.name: helper.get_attribute_value(a) for a in node.attribute}


def _s(v: object) -> object:
    return v.decode() if isinstance(v, bytes) else v


# ---------------------------------------------------------------------------------------------------
# what each route lacks (measured) and which rules fix it


@dataclass(frozen=True)
class Gap:
    """An op a route cannot take as it is: what happens (measured) and the rules to try, in order."""

    reason: str
    rules: tuple[str, ...]


# Measured on this machine (onnx2tf 1.28.8, ai-edge-quantizer 0.10, LiteRT 2.3, tflite-micro 0.dev20261023182759)
# by converting one-op graphs and the models in tests/realmodels.py; ops not listed convert and run (float)
# or quantize to full integer (int8 and int16 activations): Tanh, Sigmoid, Softmax, MatMul (weights and
# activations), ReduceMean, Mul/Add/Sub, Pow(2), LayerNormalization (int8), HardSwish (int8), Reshape/Slice.
_ONNX2TF = "onnx2tf 1.28.8 has no converter for it"
_WHILE = "a WHILE loop, whose weights sit in a loop-body subgraph that ai-edge-quantizer does not calibrate"
_GRU = (
    "onnx2tf 1.28.8 fails on torch's GRU when given -b 1, as the converter runs it ('cannot convert ONNX node ... GRU': "
    "a Split that does not divide); without -b 1 it writes " + _WHILE
)
_LSTM = (
    "onnx2tf 1.28.8 fails on an LSTM without initial state (ValueError: initial_state not compatible with cell.state_size, "
    "also with -eru) and writes one with initial state as " + _WHILE + "; it never emits the fused UNIDIRECTIONAL_SEQUENCE_LSTM "
    "(its LSTM is a custom Keras cell in an RNN layer)"
)
_RNN = (
    "onnx2tf 1.28.8 writes " + _WHILE + ", and its float output was wrong (0.81 max abs deviation from onnxruntime on a "
    "5-step test; ai-edge-quantizer: 'Tensor data is null')"
)

GAPS: dict[str, dict[str, Gap]] = {
    "ort": {},
    "tflite": {
        "Erf": Gap("onnx2tf emits TensorFlow's Erf, which LiteRT runs only with the Flex delegate (FlexErf)", ("erf_rational",)),
        "com.microsoft.QuickGelu": Gap(_ONNX2TF, ("quickgelu_sigmoid",)),
        "com.microsoft.FusedMatMul": Gap(_ONNX2TF, ("fusedmatmul_matmul",)),
        "DFT": Gap(_ONNX2TF, ("dft_matmul",)),
        "GRU": Gap(_GRU, ("gru_unroll",)),
        "LSTM": Gap(_LSTM, ("lstm_unroll",)),
        "RNN": Gap(_RNN, ("rnn_unroll",)),
    },
    "tflm": {
        "Gelu": Gap("tflite-micro has no GELU kernel (Didn't find op for builtin opcode 'GELU')", ("gelu_tanh",)),
        "Erf": Gap("onnx2tf emits TensorFlow's Erf, which has no TFLite builtin", ("gelu_erf_pattern", "erf_tanh")),
        "Softplus": Gap("onnx2tf emits EXP/LOG, which ai-edge-quantizer leaves in float (not full integer)", ("softplus_sigmoid",)),
        "LayerNormalization": Gap(
            "with int16 activations onnx2tf's SQUARED_DIFFERENCE stays float in ai-edge-quantizer (int8 is full "
            "integer); the decomposition (MEAN/SUB/MUL/RSQRT) is full integer at both widths",
            ("layernorm_decompose",),
        ),
        "HardSwish": Gap("with int16 activations HARD_SWISH stays float in ai-edge-quantizer (int8 is full integer)", ("hardswish_relu6",)),
        "Add": Gap(
            "a constant with -inf (an attention mask) quantizes to a scale of ~1e36 and tflite-micro aborts (exit -6) in ADD",
            ("finite_mask",),
        ),
        "Gather": Gap("tflite-micro's GATHER has no int16 kernel (\"Type 'INT16' is not supported by gather\")", ("gather_slice",)),
        "com.microsoft.QuickGelu": Gap(_ONNX2TF, ("quickgelu_sigmoid",)),
        "com.microsoft.FusedMatMul": Gap(_ONNX2TF, ("fusedmatmul_matmul",)),
        "DFT": Gap(_ONNX2TF, ("dft_matmul",)),
        "GRU": Gap(_GRU, ("gru_unroll",)),
        "LSTM": Gap(_LSTM, ("lstm_unroll",)),
        "RNN": Gap(_RNN, ("rnn_unroll",)),
    },
}


def _gap(runtime: str, table: Mapping[str, Gap], node: onnx.NodeProto) -> Gap | None:
    gap = table.get(op_key(node))
    if gap is None and runtime != "ort" and node.domain not in _DEFAULT_DOMAINS:
        return Gap(f"onnx2tf converts only default-domain ONNX ops, not domain '{node.domain}'", ())
    return gap


def _table(runtime: str, table: Mapping[str, Gap] | None) -> Mapping[str, Gap]:
    if runtime not in GAPS:
        raise LegalizeError(f"runtime '{runtime}' has no legalisation table; expected one of {', '.join(GAPS)}")
    if table is None:
        return GAPS[runtime]
    for key, gap in table.items():
        unknown = [r for r in gap.rules if r not in RULES]
        if unknown:
            raise LegalizeError(f"the table entry for {key} names unknown rules {unknown}; registered: {', '.join(sorted(RULES))}")
    return table


# ---------------------------------------------------------------------------------------------------
# the pass


def _toposort(nodes: list[onnx.NodeProto], available: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order (Kahn's algorithm keeping the original order among ready nodes)."""
    have = set(available)
    out: list[onnx.NodeProto] = []
    pending = list(nodes)
    while pending:
        rest = []
        progressed = False
        for n in pending:
            if all((not i) or i in have for i in n.input):
                out.append(n)
                have.update(n.output)
                progressed = True
            else:
                rest.append(n)
        if not progressed:  # a cycle or a missing producer: keep the remaining order, the checker will say
            out.extend(rest)
            break
        pending = rest
    return out


def _try(runtime: str, table: Mapping[str, Gap], g: GraphView, node: onnx.NodeProto) -> tuple[str, Replacement | None, str]:
    """(rule name, its replacement, "") or ("", None, why nothing applies; "" when the runtime takes the node)."""
    gap = _gap(runtime, table, node)
    if gap is None:
        return "", None, ""
    reasons = []
    for rule_name in gap.rules:
        res = RULES[rule_name].fn(g, node)
        if isinstance(res, Replacement):
            return rule_name, res, ""
        if res is not None:
            reasons.append(f"{rule_name}: {res}")
    if gap.rules and not reasons:  # every rule says this node does not have the problem
        return "", None, ""
    detail = "; ".join(reasons) if reasons else "no rewrite is registered"
    return "", None, f"{gap.reason} ({detail})"


def unsupported_ops(proto: onnx.ModelProto, runtime: str, table: Mapping[str, Gap] | None = None) -> list[Unsupported]:
    """The nodes a runtime lacks that no registered rewrite can replace, each with a reason.

    Args:
        proto: the ONNX model.
        runtime: ``ort``, ``tflite`` or ``tflm``.
        table: op key -> `Gap` to use instead of ``GAPS[runtime]``.

    Returns:
        One entry per node (op, node name, why it is unsupported and why each rule declined).

    Raises:
        LegalizeError: an unknown runtime, or a table naming an unknown rule.
    """
    gaps = _table(runtime, table)
    g = GraphView(proto)
    out = []
    for node in proto.graph.node:
        _, rep, reason = _try(runtime, gaps, g, node)
        if rep is None and reason:
            out.append(Unsupported(op_key(node), _node_label(node), reason))
    return out


def legalize(proto: onnx.ModelProto, runtime: str, table: Mapping[str, Gap] | None = None) -> tuple[onnx.ModelProto, list[Rewrite]]:
    """Rewrite every node the runtime lacks into ops it has.

    The input is not modified. Nodes with no applicable rule are left in place (see `unsupported_ops`).

    Args:
        proto: the ONNX model (external data loaded, if any: recurrent weights are split by value).
        runtime: ``ort`` (returns a copy), ``tflite`` or ``tflm``.
        table: op key -> `Gap` to use instead of ``GAPS[runtime]`` (to apply a rule a route does not need,
            or to try a new one).

    Returns:
        (the rewritten model, the rewrites applied in graph order).

    Raises:
        LegalizeError: an unknown runtime, or a table naming an unknown rule.
    """
    gaps = _table(runtime, table)
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    if not gaps:
        return out, []
    g = GraphView(out)
    removed: set[int] = set()
    new_nodes: dict[int, list[onnx.NodeProto]] = {}
    rewrites: list[Rewrite] = []
    new_inits: list[TensorProto] = []
    drop: set[str] = set()
    nodes = list(out.graph.node)
    index = {id(n): k for k, n in enumerate(nodes)}
    for k, node in enumerate(nodes):
        if id(node) in removed:
            continue
        rule, rep, _ = _try(runtime, gaps, g, node)
        if rep is None:
            continue
        if any(id(n) in removed for n in rep.remove):  # overlaps an earlier pattern: leave it
            continue
        removed.update(id(n) for n in rep.remove)
        new_nodes[k] = rep.builder.nodes
        new_inits.extend(rep.builder.inits)
        drop.update(rep.drop_inits)
        rewrites.append(
            Rewrite(
                rule,
                op_key(node),
                tuple(_node_label(n) for n in sorted(rep.remove, key=lambda n: index[id(n)])),
                rep.replacement,
                rep.builder.added(),
                rep.max_error,
                rep.pieces,
            )
        )
    if not rewrites:
        return out, []
    merged: list[onnx.NodeProto] = []
    for k, node in enumerate(nodes):
        merged.extend(new_nodes.get(k, []))
        if id(node) not in removed:
            merged.append(node)
    available = {i.name for i in out.graph.input} | {i.name for i in out.graph.initializer} | {i.name for i in new_inits}
    ordered = _toposort(merged, available)
    del out.graph.node[:]
    out.graph.node.extend(ordered)
    out.graph.initializer.extend(new_inits)
    still_used = {i for n in out.graph.node for i in n.input} | {o.name for o in out.graph.output}
    keep = [i for i in out.graph.initializer if not (i.name in drop and i.name not in still_used)]
    del out.graph.initializer[:]
    out.graph.initializer.extend(keep)
    # shapes of removed intermediates would mislead later passes; shape inference recomputes them
    del out.graph.value_info[:]
    return out, rewrites


def origin_map(rewrites: list[Rewrite]) -> dict[str, WeightPiece]:
    """Piece initializer name -> where it was cut from (`WeightPiece.source`, rows, transposed)."""
    return {p.name: p for r in rewrites for p in r.pieces}


def pieces_by_source(rewrites: list[Rewrite]) -> dict[str, tuple[str, ...]]:
    """Original initializer name -> names of the pieces that replaced it, in gate order."""
    out: dict[str, list[str]] = {}
    for r in rewrites:
        for p in r.pieces:
            out.setdefault(p.source, []).append(p.name)
    return {k: tuple(v) for k, v in out.items()}


# ---------------------------------------------------------------------------------------------------
# deviation


def _random_feeds(proto: onnx.ModelProto, n: int, rng: np.random.Generator, scale: float) -> dict[str, np.ndarray]:
    inits = {i.name for i in proto.graph.initializer}
    feeds = {}
    for v in proto.graph.input:
        if v.name in inits:
            continue
        t = v.type.tensor_type
        shape = [int(d.dim_value) if d.HasField("dim_value") else n for d in t.shape.dim]
        dt = np.dtype(helper.tensor_dtype_to_np_dtype(t.elem_type))
        if np.issubdtype(dt, np.floating):
            feeds[v.name] = (scale * rng.standard_normal(shape)).astype(dt)
        else:
            feeds[v.name] = np.zeros(shape, dt)
    return feeds


def measure_deviation(
    original: onnx.ModelProto, rewritten: onnx.ModelProto, n: int = 4, seed: int = 0, scale: float = 1.0, rounds: int = 4
) -> Deviation:
    """Max abs and normwise relative deviation of the graph outputs on random inputs (onnxruntime).

    Inputs are N(0, scale^2) in each float input; symbolic dimensions (the batch) take ``n``.

    Args:
        original: the reference model.
        rewritten: the legalised (or canonicalised) model with the same inputs and outputs.
        n: the size given to symbolic dimensions.
        seed: seed of the input generator.
        scale: standard deviation of the inputs.
        rounds: how many random batches to try.

    Returns:
        The largest deviations over all rounds.

    Raises:
        LegalizeError: the two models' outputs differ in names or shapes.
    """
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    a = ort.InferenceSession(original.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    b = ort.InferenceSession(rewritten.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    names = [o.name for o in a.get_outputs()]
    if names != [o.name for o in b.get_outputs()]:
        raise LegalizeError(f"the rewritten graph's outputs {[o.name for o in b.get_outputs()]} are not the original's {names}")
    rng = np.random.default_rng(seed)
    per: dict[str, float] = dict.fromkeys(names, 0.0)
    rel = peak = 0.0
    for _ in range(rounds):
        feeds = _random_feeds(original, n, rng, scale)
        ya = a.run(names, feeds)
        yb = b.run(names, {k: v for k, v in feeds.items() if k in {i.name for i in b.get_inputs()}})
        for name, u, v in zip(names, ya, yb):
            if u.shape != v.shape:
                raise LegalizeError(f"output '{name}' has shape {v.shape} after rewriting, {u.shape} before")
            d = float(np.max(np.abs(u.astype(np.float64) - v.astype(np.float64)))) if u.size else 0.0
            top = float(np.max(np.abs(u))) if u.size else 0.0
            per[name] = max(per[name], d)
            rel, peak = max(rel, d / max(top, 1e-12)), max(peak, top)
    return Deviation(max(per.values()) if per else 0.0, rel, per, peak, n, seed)


# ---------------------------------------------------------------------------------------------------
# rules: activations


_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_GELU_C = 0.044715
GELU_TANH_ERROR = 4.8e-4  # max |gelu_erf(x) - gelu_tanh(x)| over the reals (4.73e-4 on a 4e5-point grid)
ERF_TANH_ERROR = 3.6e-4  # max |erf(z) - tanh(z (a + b z^2))|, a = 2/sqrt(pi), b = 2*0.044715*a (3.58e-4)
ERF_AS_ERROR = 1.5e-7  # Abramowitz & Stegun 7.1.26
SOFTPLUS_ERROR = 6.8e-5  # degree-4 fit below (6.71e-5 on a 2e5-point grid)
# -log(1-u) ~ sum c_k u^k (k = 1..4) on [0, 1/2], Lawson-weighted least squares (near minimax)
_SOFTPLUS_COEFFS = (0.9961854281340107, 0.5663334981945553, -0.011208439211972177, 0.8768810556569853)
_AS_P = 0.3275911
_AS_A = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)


def _base(node: onnx.NodeProto) -> str:
    return _node_label(node)


def _tanh_gelu(b: Builder, x: str, out: str) -> None:
    """0.5 x (1 + tanh(sqrt(2/pi) x (1 + 0.044715 x^2))) with Mul/Add/Tanh (integer kernels everywhere)."""
    x2 = b.mul(x, x, "x2")
    p = b.add(b.mul(x2, b.scalar(_SQRT_2_OVER_PI * _GELU_C)), b.scalar(_SQRT_2_OVER_PI), "poly")
    t = b.op("Tanh", [b.mul(x, p, "inner")], "tanh")
    half = b.mul(x, b.scalar(0.5), "half_x")
    b.mul(half, b.add(t, b.scalar(1.0), "one_plus"), out=out)


@register("gelu_tanh", "Gelu", "GELU (opset 20, either approximation) -> tanh form with Mul/Add/Tanh")
def _gelu_tanh(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    approx = _s(_attrs(node).get("approximate", "none"))
    b = Builder(g, _base(node), g.dtype(node.input[0]))
    _tanh_gelu(b, node.input[0], node.output[0])
    return Replacement([node], b, "0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))", 0.0 if approx == "tanh" else GELU_TANH_ERROR)


def _scalar_const(g: GraphView, name: str) -> float | None:
    v = g.const(name)
    if v is None or v.size != 1:
        return None
    return float(v.reshape(()))


def _other(node: onnx.NodeProto, name: str) -> str | None:
    ins = list(node.input)
    if len(ins) != 2 or name not in ins:
        return None
    return ins[1] if ins[0] == name else ins[0]


def _sole_consumer(g: GraphView, name: str, op: str) -> onnx.NodeProto | None:
    users = g.consumers.get(name, [])
    if name in g.outputs or len(users) != 1 or users[0].op_type != op or users[0].domain not in _DEFAULT_DOMAINS:
        return None
    return users[0]


def _close(v: float | None, want: float) -> bool:
    return v is not None and abs(v - want) <= 1e-4 * abs(want)


@register("gelu_erf_pattern", "Erf", "x*0.5*(1+Erf(x/sqrt2)) as exported by torch -> tanh-form GELU")
def _gelu_erf_pattern(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    # Erf's input: Div(x, sqrt2) or Mul(x, 1/sqrt2)
    pre = g.producer.get(node.input[0])
    if pre is None:
        return "the Erf input is not x/sqrt(2)"
    x = None
    if pre.op_type in ("Div", "Mul") and len(g.consumers.get(pre.output[0], [])) == 1 and pre.output[0] not in g.outputs:
        want = math.sqrt(2.0) if pre.op_type == "Div" else 1.0 / math.sqrt(2.0)
        if _close(_scalar_const(g, pre.input[1]), want):
            x = pre.input[0]
        elif pre.op_type == "Mul" and _close(_scalar_const(g, pre.input[0]), want):
            x = pre.input[1]
    if x is None:
        return "the Erf input is not x/sqrt(2)"
    add = _sole_consumer(g, node.output[0], "Add")
    if add is None or not _close(_scalar_const(g, _other(add, node.output[0]) or ""), 1.0):
        return "Erf is not followed by +1"
    mul = _sole_consumer(g, add.output[0], "Mul")
    if mul is None:
        return "1+Erf is not multiplied"
    partner = _other(mul, add.output[0])
    nodes: list[onnx.NodeProto] = [pre, node, add, mul]
    if partner == x:  # (x * (1+erf)) * 0.5
        last = _sole_consumer(g, mul.output[0], "Mul")
        if last is None or not _close(_scalar_const(g, _other(last, mul.output[0]) or ""), 0.5):
            return "x*(1+Erf) is not halved"
        nodes.append(last)
    else:  # (x * 0.5) * (1+erf)
        half = g.producer.get(partner or "")
        if half is None or half.op_type != "Mul" or len(g.consumers.get(half.output[0], [])) != 1 or half.output[0] in g.outputs:
            return "1+Erf is not multiplied by x or x/2"
        if not (x in half.input and _close(_scalar_const(g, _other(half, x) or ""), 0.5)):
            return "1+Erf is not multiplied by x or x/2"
        nodes.append(half)
        last = mul
    b = Builder(g, _base(node), g.dtype(x))
    _tanh_gelu(b, x, last.output[0])
    return Replacement(nodes, b, "GELU pattern -> 0.5x(1+tanh(sqrt(2/pi)(x+0.044715x^3)))", GELU_TANH_ERROR)


@register("erf_tanh", "Erf", "Erf -> tanh(z(a + b z^2)) (Mul/Add/Tanh: integer kernels)")
def _erf_tanh(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    z = node.input[0]
    b = Builder(g, _base(node), g.dtype(z))
    a = 2.0 / math.sqrt(math.pi)
    p = b.add(b.mul(b.mul(z, z, "z2"), b.scalar(2.0 * _GELU_C * a)), b.scalar(a), "poly")
    b.op("Tanh", [b.mul(z, p, "inner")], "tanh", out=node.output[0])
    return Replacement([node], b, "tanh(z(a+bz^2)), a=2/sqrt(pi), b=0.0894a", ERF_TANH_ERROR)


@register("erf_rational", "Erf", "Erf -> Abramowitz-Stegun 7.1.26 (Abs/Div/Exp/Sign: float kernels)")
def _erf_rational(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    z = node.input[0]
    b = Builder(g, _base(node), g.dtype(z))
    az = b.op("Abs", [z], "abs")
    t = b.op("Div", [b.scalar(1.0), b.add(b.mul(az, b.scalar(_AS_P)), b.scalar(1.0))], "t")
    acc = b.scalar(_AS_A[-1])
    for c in reversed(_AS_A[:-1]):  # Horner: ((a5 t + a4) t + a3) ...
        acc = b.add(b.mul(acc, t), b.scalar(c))
    e = b.op("Exp", [b.mul(b.mul(z, z, "z2"), b.scalar(-1.0))], "exp")
    y = b.sub(b.scalar(1.0), b.mul(b.mul(acc, t), e), "y")
    b.mul(b.op("Sign", [z], "sign"), y, out=node.output[0])
    return Replacement([node], b, "sign(z)(1 - t(a1+t(a2+...))exp(-z^2)), t = 1/(1+0.3275911|z|)", ERF_AS_ERROR)


@register("quickgelu_sigmoid", "com.microsoft.QuickGelu", "QuickGelu(alpha) -> x * Sigmoid(alpha x)")
def _quickgelu(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    alpha = float(_attrs(node).get("alpha", 1.702))
    x = node.input[0]
    b = Builder(g, _base(node), g.dtype(x))
    s = b.op("Sigmoid", [b.mul(x, b.scalar(alpha), "ax") if alpha != 1.0 else x], "sigmoid")
    b.mul(x, s, out=node.output[0])
    return Replacement([node], b, f"x*Sigmoid({alpha:g}x)", 0.0)


@register("softplus_sigmoid", "Softplus", "Softplus -> Relu(x) + p(Sigmoid(-|x|)) (integer kernels)")
def _softplus(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    x = node.input[0]
    b = Builder(g, _base(node), g.dtype(x))
    pos = b.op("Relu", [x], "relu")
    neg = b.op("Relu", [b.mul(x, b.scalar(-1.0), "neg")], "relu_neg")
    u = b.op("Sigmoid", [b.mul(b.add(pos, neg, "abs"), b.scalar(-1.0), "minus_abs")], "u")
    acc = b.scalar(_SOFTPLUS_COEFFS[-1])
    for c in reversed(_SOFTPLUS_COEFFS[:-1]):
        acc = b.add(b.mul(acc, u), b.scalar(c))
    b.add(pos, b.mul(acc, u, "tail"), out=node.output[0])
    return Replacement([node], b, "relu(x) + p(sigmoid(-|x|)), p ~ -log(1-u) (degree 4)", SOFTPLUS_ERROR)


@register("hardswish_relu6", "HardSwish", "HardSwish -> x * Clip(x + 3, 0, 6) / 6")
def _hardswish(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    # onnx2tf fuses Clip(0, 6) into the ADD as RELU6, which has integer kernels at both widths; a Clip to
    # [0, 1] (HardSigmoid's form) becomes RELU_0_TO_1 (no TFLM kernel) or RELU + MINIMUM (MINIMUM stays float)
    x = node.input[0]
    b = Builder(g, _base(node), g.dtype(x))
    c = b.op("Clip", [b.add(x, b.scalar(3.0), "x_plus_3"), b.scalar(0.0, "lo"), b.scalar(6.0, "hi")], "relu6")
    b.mul(b.mul(x, c, "x_relu6"), b.scalar(1.0 / 6.0), out=node.output[0])
    return Replacement([node], b, "x*clip(x+3, 0, 6)/6", 0.0)


@register("layernorm_decompose", "LayerNormalization", "LayerNormalization -> ReduceMean/Sub/Mul/Add/Sqrt/Div")
def _layernorm(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    a = _attrs(node)
    if any(g.used(o) for o in node.output[1:]):
        return "its Mean or InvStdDev output is used"
    shape = g.shapes.get(node.input[0])
    if shape is None:
        return "the rank of its input is unknown"
    rank = len(shape)
    axis = int(a.get("axis", -1))
    axis = axis + rank if axis < 0 else axis
    axes = list(range(axis, rank))
    eps = float(a.get("epsilon", 1e-5))
    x = node.input[0]
    b = Builder(g, _base(node), g.dtype(x))
    mu = b.axes_op("ReduceMean", x, axes, "mean", keepdims=1)
    d = b.sub(x, mu, "centred")
    var = b.axes_op("ReduceMean", b.mul(d, d, "sq"), axes, "var", keepdims=1)
    # d * (1/sqrt(v)): onnx2tf turns 1/Sqrt into RSQRT, which has integer kernels (SQRT has none in TFLM)
    inv = b.op("Div", [b.scalar(1.0, "one"), b.op("Sqrt", [b.add(var, b.scalar(eps, "eps"))], "std")], "inv_std")
    n = b.mul(d, inv, "normed")
    has_bias = len(node.input) > 2 and bool(node.input[2])
    y = b.mul(n, node.input[1], "scaled", out=None if has_bias else node.output[0])
    if has_bias:
        b.add(y, node.input[2], out=node.output[0])
    return Replacement([node], b, "(x-mean)/sqrt(var+eps)*scale+bias", 0.0)


@register("fusedmatmul_matmul", "com.microsoft.FusedMatMul", "FusedMatMul -> (Transpose) MatMul (Mul alpha)")
def _fusedmatmul(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    a = _attrs(node)
    if a.get("transBatchA", 0) or a.get("transBatchB", 0):
        return "transBatchA/transBatchB are not supported"
    b = Builder(g, _base(node), g.dtype(node.input[0]))
    ins = []
    for name, flag in ((node.input[0], a.get("transA", 0)), (node.input[1], a.get("transB", 0))):
        if flag:
            shape = g.shapes.get(name)
            if shape is None or len(shape) < 2:
                return f"the rank of '{name}' is unknown, so its transpose cannot be written"
            perm = list(range(len(shape) - 2)) + [len(shape) - 1, len(shape) - 2]
            name = b.op("Transpose", [name], "transpose", perm=perm)  # a weight keeps its name: the Transpose reads it
        ins.append(name)
    alpha = float(a.get("alpha", 1.0))
    if alpha == 1.0:
        b.op("MatMul", ins, "matmul", out=node.output[0])
    else:
        b.mul(b.op("MatMul", ins, "matmul"), b.scalar(alpha, "alpha"), out=node.output[0])
    return Replacement([node], b, "MatMul" + ("" if alpha == 1.0 else f" * {alpha:g}"), 0.0)


MASK_LIMIT = 30.0  # -inf in an additive mask becomes -30: exp(-30) ~ 1e-13 next to an unmasked score


@register("finite_mask", "Add", "Add of a constant holding +-inf (an attention mask) -> the same Add of a finite copy (+-30)")
def _finite_mask(g: GraphView, node: onnx.NodeProto) -> Replacement | str | None:
    # -inf quantizes to nothing useful: the converter clamps it to -3.4e38, the int8 scale becomes ~1e36 and
    # the kernel's rescaling overflows. A softmax cannot tell -30 from -inf while the unmasked scores of a
    # row lie within ~14 of each other (then exp(-30 + 14) < 1e-7, below even int16 resolution), and the
    # add's calibrated range grows by 30 only.
    for k, name in enumerate(node.input):
        v = g.const(name)
        if v is None or not np.issubdtype(v.dtype, np.floating) or np.all(np.isfinite(v)):
            continue
        if np.any(np.isnan(v)):
            return f"the constant '{name}' holds NaN"
        b = Builder(g, _base(node), v.dtype)
        finite = b.const(np.clip(v, -MASK_LIMIT, MASK_LIMIT), "", name=g.fresh(f"{name}__finite"))
        ins = list(node.input)
        ins[k] = finite
        b.op("Add", ins, "add", out=node.output[0])
        # the bound: a masked softmax weight is at most exp(-MASK_LIMIT + 14) instead of 0 (scores within 14)
        return Replacement(
            [node], b, f"'{name}' with +-inf replaced by +-{MASK_LIMIT:g} in '{finite}'", math.exp(-MASK_LIMIT + 14.0), drop_inits=(name,)
        )
    return None


@register("gather_slice", "Gather", "Gather of one constant index from a computed tensor -> Slice (+ Squeeze for a scalar index)")
def _gather_slice(g: GraphView, node: onnx.NodeProto) -> Replacement | str | None:
    idx = g.const(node.input[1])
    if g.const(node.input[0]) is not None or idx is None or idx.size != 1 or not np.issubdtype(g.dtype(node.input[0]), np.floating):
        return None  # an embedding lookup (constant table), a computed index or shape arithmetic: not quantized activations
    shape = g.shapes.get(node.input[0])
    axis = int(_attrs(node).get("axis", 0))
    if shape is None:
        return "the rank of its data input is unknown"
    axis = axis + len(shape) if axis < 0 else axis
    i, size = int(idx.reshape(())), shape[axis]
    if i < 0:
        if size is None:
            return "a negative index on a dimension of unknown size"
        i += size
    b = Builder(g, _base(node), g.dtype(node.input[0]))
    if idx.ndim == 0:
        b.axes_op("Squeeze", b.slice(node.input[0], i, i + 1, axis), [axis], "squeeze", out=node.output[0])
    elif idx.ndim == 1:
        b.slice(node.input[0], i, i + 1, axis, out=node.output[0])
    else:  # indices of shape [1, 1, ...]: the extra axes come in after `axis`
        b.axes_op(
            "Unsqueeze", b.slice(node.input[0], i, i + 1, axis), list(range(axis + 1, axis + idx.ndim)), "unsqueeze", out=node.output[0]
        )
    return Replacement([node], b, f"Slice [{i}:{i + 1}] on axis {axis}" + (" + Squeeze" if idx.ndim == 0 else ""), 0.0)


# ---------------------------------------------------------------------------------------------------
# rules: DFT


@register("dft_matmul", "DFT", "DFT of fixed length -> MatMul with constant cos/sin bases")
def _dft(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    a = _attrs(node)
    shape = g.shapes.get(node.input[0])
    if shape is None:
        return "the shape of its input is unknown (canonicalise first)"
    rank = len(shape)
    if g.opset >= 20:
        axis_v = g.const(node.input[2]) if len(node.input) > 2 and node.input[2] else np.array(-2)
        if axis_v is None:
            return "its axis is computed at run time"
        axis = int(axis_v.reshape(()))
    else:
        axis = int(a.get("axis", 1))
    axis = axis + rank if axis < 0 else axis
    length = shape[axis] if 0 <= axis < rank - 1 else None
    if length is None or shape[-1] not in (1, 2):
        return f"axis {axis} of input shape {list(shape)} is not a fixed-length signal axis with a last dimension of 1 or 2"
    n_in = int(length)
    n_fft = n_in
    if len(node.input) > 1 and node.input[1]:
        v = g.const(node.input[1])
        if v is None:
            return "its dft_length is computed at run time"
        n_fft = int(v.reshape(()))
    inverse, onesided = int(a.get("inverse", 0)), int(a.get("onesided", 0))
    k = n_fft // 2 + 1 if onesided else n_fft
    n = np.arange(n_in)[:, None]
    theta = 2.0 * np.pi * ((n * np.arange(k)[None, :]) % n_fft) / n_fft
    scale = 1.0 / n_fft if inverse else 1.0
    sign = 1.0 if inverse else -1.0
    live = (n < n_fft).astype(np.float64)  # rows past dft_length are truncated away
    m1, m2 = np.cos(theta) * scale * live, sign * np.sin(theta) * scale * live
    b = Builder(g, _base(node), g.dtype(node.input[0]))
    x = node.input[0]
    last = rank - 1
    if shape[-1] == 1:
        parts = [b.axes_op("Squeeze", x, [last], "real")]
    else:
        parts = [b.axes_op("Squeeze", b.slice(x, i, i + 1, last), [last], nm) for i, nm in ((0, "real"), (1, "imag"))]
    perm = None
    if axis != last - 1:  # bring the signal axis last for MatMul, and back afterwards
        perm = [d for d in range(last) if d != axis] + [axis]
        parts = [b.op("Transpose", [p], "to_last", perm=perm) for p in parts]
    c1, c2 = b.const(m1, "dft_cos"), b.const(m2, "dft_sin")
    if len(parts) == 1:
        re, im = b.op("MatMul", [parts[0], c1], "re"), b.op("MatMul", [parts[0], c2], "im")
    else:
        ar, ai = parts
        re = b.sub(b.op("MatMul", [ar, c1]), b.op("MatMul", [ai, c2]), "re")
        im = b.add(b.op("MatMul", [ai, c1]), b.op("MatMul", [ar, c2]), "im")
    if perm is not None:
        inv = [int(i) for i in np.argsort(perm)]
        re, im = b.op("Transpose", [re], "re_back", perm=inv), b.op("Transpose", [im], "im_back", perm=inv)
    re, im = b.axes_op("Unsqueeze", re, [last], "re_u"), b.axes_op("Unsqueeze", im, [last], "im_u")
    b.op("Concat", [re, im], "complex", out=node.output[0], axis=last)
    what = (
        f"{'inverse ' if inverse else ''}{'onesided ' if onesided else ''}DFT of length {n_fft} -> MatMul with [{n_in}, {k}] cos/sin bases"
    )
    return Replacement([node], b, what, 0.0)


# ---------------------------------------------------------------------------------------------------
# rules: recurrent cells


_GATES = {"GRU": ("z", "r", "h"), "LSTM": ("i", "o", "f", "c"), "RNN": ("i",)}
_DEFAULT_ACTS = {"GRU": ["Sigmoid", "Tanh"], "LSTM": ["Sigmoid", "Tanh", "Tanh"], "RNN": ["Tanh"]}


@dataclass
class _Cell:
    """Parsed recurrent node: sizes, direction and the per-gate pieces it needs."""

    node: onnx.NodeProto
    hidden: int
    length: int
    reverse: bool
    w: dict[str, str] = field(default_factory=dict)  # gate -> piece name ([in, H])
    r: dict[str, str] = field(default_factory=dict)  # gate -> piece name ([H, H])
    wb: dict[str, str] = field(default_factory=dict)
    rb: dict[str, str] = field(default_factory=dict)
    p: dict[str, str] = field(default_factory=dict)
    pieces: list[WeightPiece] = field(default_factory=list)
    drop: list[str] = field(default_factory=list)


def _parse_cell(g: GraphView, node: onnx.NodeProto, b: Builder) -> _Cell | str:
    kind = node.op_type
    a = _attrs(node)
    direction = _s(a.get("direction", "forward"))
    if direction not in ("forward", "reverse"):
        return f"direction '{direction}' is not supported (forward or reverse only)"
    if int(a.get("layout", 0)):
        return "layout 1 (batch first) is not supported; torch exports layout 0"
    if "clip" in a:
        return "cell clipping is not supported"
    if int(a.get("input_forget", 0)):
        return "input_forget is not supported"
    acts = [str(_s(x)) for x in a.get("activations", [])]
    if acts and [x.lower() for x in acts] != [x.lower() for x in _DEFAULT_ACTS[kind]]:
        return f"activations {acts} are not the defaults {_DEFAULT_ACTS[kind]}"
    hidden = int(a.get("hidden_size", 0))
    xshape = g.shapes.get(node.input[0])
    if not hidden or xshape is None or len(xshape) != 3 or xshape[0] is None:
        return "the sequence length (dimension 0 of X) is not static; canonicalise with a fixed shape first"
    length = int(xshape[0])
    if len(node.input) > 4 and node.input[4]:
        lens = g.const(node.input[4])
        if lens is None or not np.all(lens == length):
            return "sequence_lens is given and not the full length everywhere"
    cell = _Cell(node, hidden, length, direction == "reverse")
    gates = _GATES[kind]
    arrays = {}
    for slot, label in ((1, "W"), (2, "R"), (3, "B")) + (((7, "P"),) if kind == "LSTM" else ()):
        name = node.input[slot] if len(node.input) > slot else ""
        if not name:
            continue
        arr = g.const(name)
        if arr is None:
            return f"its {label} input '{name}' is not a constant initializer (computed at run time; canonicalise first)"
        arrays[label] = (name, arr)
    if "W" not in arrays or "R" not in arrays:
        return "W or R is missing"
    dt = b.dtype
    for label, table in (("W", cell.w), ("R", cell.r)):
        name, arr = arrays[label]
        for k, gate in enumerate(gates):
            piece = WeightPiece(g.fresh(f"{name}__gate_{gate}"), name, k * hidden, (k + 1) * hidden, True)
            table[gate] = b.const(piece.take(arr), "", dtype=dt, name=piece.name)
            cell.pieces.append(piece)
        cell.drop.append(name)
    if "B" in arrays:
        name, arr = arrays["B"]
        for half, table, tag in ((0, cell.wb, "Wb"), (1, cell.rb, "Rb")):
            for k, gate in enumerate(gates):
                off = half * len(gates) * hidden
                piece = WeightPiece(g.fresh(f"{name}__{tag}_{gate}"), name, off + k * hidden, off + (k + 1) * hidden, False)
                table[gate] = b.const(piece.take(arr), "", dtype=dt, name=piece.name)
                cell.pieces.append(piece)
        cell.drop.append(name)
    if "P" in arrays:
        name, arr = arrays["P"]
        for k, gate in enumerate(("i", "o", "f")):
            piece = WeightPiece(g.fresh(f"{name}__p_{gate}"), name, k * hidden, (k + 1) * hidden, False)
            cell.p[gate] = b.const(piece.take(arr), "", dtype=dt, name=piece.name)
            cell.pieces.append(piece)
        cell.drop.append(name)
    return cell


def _step_inputs(b: Builder, cell: _Cell) -> list[str]:
    """x_t as [B, in] for t in time order, one Slice + Squeeze per step.

    Every tensor of the unrolled cell is 2-D [B, *]: onnx2tf reads 3-D tensors as NCW and transposes
    them (the projections of a [L, B, C] tensor came out wrong), never 2-D ones. When X is torch's
    batch_first transpose of a [B, L, C] tensor, the steps are read from that tensor directly."""
    x, axis = cell.node.input[0], 0
    pre = b.g.producer.get(x)
    if pre is not None and pre.op_type == "Transpose" and list(_attrs(pre).get("perm", [])) == [1, 0, 2]:
        x, axis = pre.input[0], 1
    # Slice + Squeeze, not Gather: TFLM's GATHER has no int16 kernel ("Type 'INT16' is not supported by gather")
    return [b.axes_op("Squeeze", b.slice(x, t, t + 1, axis, f"x_t{t}"), [axis], f"x_t{t}") for t in range(cell.length)]


def _biases(b: Builder, cell: _Cell, merged: tuple[str, ...]) -> dict[str, str]:
    """gate -> the bias added to x_t W_gate: Wb, or Wb + Rb where Rb is not gated (one Add of two
    constants per gate, which the TFLite converter folds)."""
    out = {}
    for gate, wb in cell.wb.items():
        out[gate] = b.add(wb, cell.rb[gate], f"bias_{gate}") if gate in merged else wb
    return out


def _proj(b: Builder, cell: _Cell, x_t: str, gate: str, bias: dict[str, str]) -> str:
    """x_t W_gate + bias_gate."""
    p = b.op("MatMul", [x_t, cell.w[gate]], f"x_{gate}")
    return b.add(p, bias[gate], f"x_{gate}_b") if gate in bias else p


def _initial(b: Builder, node: onnx.NodeProto, slot: int) -> str | None:
    """The initial state [1, B, H] of one direction as [B, H], or None when absent (zero)."""
    if len(node.input) > slot and node.input[slot]:
        return b.axes_op("Squeeze", node.input[slot], [0], f"init{slot}")
    return None


def _sole_user(g: GraphView, name: str, op: str) -> onnx.NodeProto | None:
    users = g.consumers.get(name, [])
    if name in g.outputs or len(users) != 1 or users[0].op_type != op or users[0].domain not in _DEFAULT_DOMAINS:
        return None
    return users[0]


def _squeeze_axes(g: GraphView, node: onnx.NodeProto) -> list[int] | None:
    if len(node.input) > 1 and node.input[1]:
        v = g.const(node.input[1])
        return None if v is None else [int(a) for a in np.ravel(v)]
    axes = _attrs(node).get("axes")
    return None if axes is None else [int(a) for a in axes]


CONCAT_MAX_INPUTS = 10  # tflite-micro's CONCATENATION: "num_inputs <= kMaxInputNum" (10)


def _concat(b: Builder, parts: list[str], axis: int, out: str | None) -> str:
    """Concat in a tree of at most CONCAT_MAX_INPUTS inputs per node."""
    while len(parts) > CONCAT_MAX_INPUTS:
        parts = [
            b.op("Concat", parts[k : k + CONCAT_MAX_INPUTS], "y_part", axis=axis) if len(parts[k : k + CONCAT_MAX_INPUTS]) > 1 else parts[k]
            for k in range(0, len(parts), CONCAT_MAX_INPUTS)
        ]
    return b.op("Concat", parts, "y_seq", out=out, axis=axis)


def _outputs(g: GraphView, b: Builder, cell: _Cell, hs: list[str], cs: list[str] | None) -> list[onnx.NodeProto]:
    """Y = the h of every step stacked as [L, 1, B, H]; Y_h (and Y_c) = the last step's, [1, B, H].

    torch reads Y through Squeeze(axis 1) -> Transpose(1, 0, 2) (batch_first); those nodes are replaced
    too, the steps stacked straight into [L, B, H] or [B, L, H]: onnx2tf misreads the 4-D Y ('cannot
    convert ... Squeeze' at batch 1). Returns the consumer nodes replaced."""
    node = cell.node
    if len(node.output) > 1 and g.used(node.output[1]):
        b.axes_op("Unsqueeze", hs[-1], [0], "y_h", out=node.output[1])
    if cs is not None and len(node.output) > 2 and g.used(node.output[2]):
        b.axes_op("Unsqueeze", cs[-1], [0], "y_c", out=node.output[2])
    if not g.used(node.output[0]):
        return []
    order = list(reversed(hs)) if cell.reverse else hs  # Y is in time order whatever the direction
    squeeze = _sole_user(g, node.output[0], "Squeeze")
    if squeeze is not None and _squeeze_axes(g, squeeze) not in ([1], [-3]):
        squeeze = None
    transpose = None if squeeze is None else _sole_user(g, squeeze.output[0], "Transpose")
    if transpose is not None and list(_attrs(transpose).get("perm", [])) != [1, 0, 2]:
        transpose = None
    if transpose is not None:  # [B, L, H]
        replaced, axis, target = [squeeze, transpose], 1, transpose.output[0]
    elif squeeze is not None:  # [L, B, H]
        replaced, axis, target = [squeeze], 0, squeeze.output[0]
    else:  # [L, 1, B, H]
        replaced, axis, target = [], 0, None
    step = _picked_step(g, target, axis, len(order))
    if step is not None:
        # onnx2tf 1.28.8 loses a step picked out of the stacked Y (torch's out[:, -1]): the head read zeros, and a
        # GRU's float TFLite came out 0.021 (of 1.39) off the model on one step. The step is taken from its h instead.
        pick, k, keep = step
        if keep:
            b.axes_op("Unsqueeze", order[k], [axis], "y_step", out=pick.output[0])
        else:
            b.op("Identity", [order[k]], "y_step", out=pick.output[0])
        return [n for n in replaced if n is not None] + [pick]
    if len(order) == 1:
        y = b.axes_op("Unsqueeze", order[0], [axis], "y_seq", out=target)
    else:
        y = _concat(b, [b.axes_op("Unsqueeze", h, [axis], "h_row") for h in order], axis, target)
    if target is None:
        b.axes_op("Unsqueeze", y, [1], "y", out=node.output[0])
    return [n for n in replaced if n is not None]


def _picked_step(g: GraphView, target: str | None, axis: int, steps: int) -> tuple[onnx.NodeProto, int, bool] | None:
    """(the Gather, the step k, whether it keeps the axis) when the stacked Y ``target`` is read only by a Gather of
    one constant step along the time ``axis``; else None."""
    pick = None if target is None else _sole_user(g, target, "Gather")
    if pick is None:
        return None
    idx = g.const(pick.input[1])
    ax = int(_attrs(pick).get("axis", 0))
    if idx is None or idx.size != 1 or idx.ndim > 1 or (ax + 3 if ax < 0 else ax) != axis:
        return None
    k = int(idx.reshape(()))
    k = k + steps if k < 0 else k
    return (pick, k, idx.ndim == 1) if 0 <= k < steps else None


def _rec(b: Builder, h: str | None, cell: _Cell, gate: str) -> str | None:
    return None if h is None else b.op("MatMul", [h, cell.r[gate]], f"h_{gate}")


def _sum(b: Builder, terms: list[str | None], hint: str) -> str:
    live = [t for t in terms if t is not None]
    acc = live[0]
    for t in live[1:]:
        acc = b.add(acc, t, hint)
    return acc


@register("gru_unroll", "GRU", "GRU (forward/reverse, layout 0, fixed length) -> unrolled MatMul/Add/Sigmoid/Tanh/Mul")
def _gru(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    b = Builder(g, _base(node), g.dtype(node.input[0]))
    cell = _parse_cell(g, node, b)
    if isinstance(cell, str):
        return cell
    lbr = int(_attrs(node).get("linear_before_reset", 0))
    xs = _step_inputs(b, cell)
    bias = _biases(b, cell, ("z", "r") if lbr else ("z", "r", "h"))
    h = _initial(b, node, 5)
    hs = []
    for k in range(cell.length):
        t = cell.length - 1 - k if cell.reverse else k
        x = {gate: _proj(b, cell, xs[t], gate, bias) for gate in ("z", "r", "h")}
        # biases of z, r (and of h when not reset-gated) are in x; with a zero initial state R h = 0 drops out
        z = b.op("Sigmoid", [_sum(b, [x["z"], _rec(b, h, cell, "z")], "z_pre")], "z")
        r = b.op("Sigmoid", [_sum(b, [x["r"], _rec(b, h, cell, "r")], "r_pre")], "r")
        if lbr:  # hh = tanh(x Wh + Wbh + r (h Rh + Rbh))
            rec = [_rec(b, h, cell, "h"), cell.rb.get("h")]
            gated = b.mul(r, _sum(b, rec, "h_rec"), "r_rec") if any(v is not None for v in rec) else None
            hh = b.op("Tanh", [_sum(b, [x["h"], gated], "h_pre")], "hh")
        else:  # hh = tanh(x Wh + Wbh + Rbh + (r h) Rh)
            rh = None if h is None else b.op("MatMul", [b.mul(r, h, "r_h"), cell.r["h"]], "h_h")
            hh = b.op("Tanh", [_sum(b, [x["h"], rh], "h_pre")], "hh")
        # h' = (1 - z) hh + z h = hh + z (h - hh)
        h = b.sub(hh, b.mul(z, hh, "z_hh"), "h") if h is None else b.add(hh, b.mul(z, b.sub(h, hh, "h_minus_hh"), "z_d"), "h")
        hs.append(h)
    extra = _outputs(g, b, cell, hs, None)
    return Replacement(
        [node, *extra],
        b,
        f"GRU unrolled over {cell.length} steps (hidden {cell.hidden}, linear_before_reset={lbr})",
        0.0,
        tuple(cell.pieces),
        tuple(cell.drop),
    )


@register("lstm_unroll", "LSTM", "LSTM (forward/reverse, layout 0, fixed length, peepholes) -> unrolled MatMul/Add/Sigmoid/Tanh/Mul")
def _lstm(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    b = Builder(g, _base(node), g.dtype(node.input[0]))
    cell = _parse_cell(g, node, b)
    if isinstance(cell, str):
        return cell
    xs = _step_inputs(b, cell)
    bias = _biases(b, cell, ("i", "o", "f", "c"))
    h, c = _initial(b, node, 5), _initial(b, node, 6)
    hs, cs = [], []
    for k in range(cell.length):
        t = cell.length - 1 - k if cell.reverse else k
        x = {gate: _proj(b, cell, xs[t], gate, bias) for gate in ("i", "o", "f", "c")}
        pc_i = b.mul(cell.p["i"], c, "p_i") if c is not None and "i" in cell.p else None
        pc_f = b.mul(cell.p["f"], c, "p_f") if c is not None and "f" in cell.p else None
        i = b.op("Sigmoid", [_sum(b, [x["i"], _rec(b, h, cell, "i"), pc_i], "i_pre")], "i")
        f = b.op("Sigmoid", [_sum(b, [x["f"], _rec(b, h, cell, "f"), pc_f], "f_pre")], "f")
        cc = b.op("Tanh", [_sum(b, [x["c"], _rec(b, h, cell, "c")], "c_pre")], "cc")
        ic = b.mul(i, cc, "i_cc")
        c = ic if c is None else b.add(b.mul(f, c, "f_c"), ic, "c")
        pc_o = b.mul(cell.p["o"], c, "p_o") if "o" in cell.p else None
        o = b.op("Sigmoid", [_sum(b, [x["o"], _rec(b, h, cell, "o"), pc_o], "o_pre")], "o")
        h = b.mul(o, b.op("Tanh", [c], "tanh_c"), "h")
        hs.append(h)
        cs.append(c)
    extra = _outputs(g, b, cell, hs, cs)
    return Replacement(
        [node, *extra],
        b,
        f"LSTM unrolled over {cell.length} steps (hidden {cell.hidden}{', peepholes' if cell.p else ''})",
        0.0,
        tuple(cell.pieces),
        tuple(cell.drop),
    )


@register("rnn_unroll", "RNN", "RNN (tanh, forward/reverse, layout 0, fixed length) -> unrolled MatMul/Add/Tanh")
def _rnn(g: GraphView, node: onnx.NodeProto) -> Replacement | str:
    b = Builder(g, _base(node), g.dtype(node.input[0]))
    cell = _parse_cell(g, node, b)
    if isinstance(cell, str):
        return cell
    xs = _step_inputs(b, cell)
    bias = _biases(b, cell, ("i",))
    h = _initial(b, node, 5)
    hs = []
    for k in range(cell.length):
        t = cell.length - 1 - k if cell.reverse else k
        h = b.op("Tanh", [_sum(b, [_proj(b, cell, xs[t], "i", bias), _rec(b, h, cell, "i")], "pre")], "h")
        hs.append(h)
    extra = _outputs(g, b, cell, hs, None)
    return Replacement(
        [node, *extra], b, f"RNN unrolled over {cell.length} steps (hidden {cell.hidden})", 0.0, tuple(cell.pieces), tuple(cell.drop)
    )
