"""Graph canonicalisation: a fixed batch, inferred shapes, constants folded, dead nodes removed.

Exporters compute shapes, pads and slice bounds at run time (torch's legacy exporter builds a circular
pad from Shape/Gather/Concat/Slice chains); converters then meet a Pad or Conv whose amounts are tensors
(onnx2tf: "cannot convert ONNX node ... (unknown op)"). `canonicalize` turns every such computation whose
inputs are constants or static shapes into a constant, so the graph that reaches a converter has fixed
pads, reshapes and slices.

How: onnx's shape inference (with data propagation) for shapes, and our own folding pass, each
foldable node evaluated with ``onnx.reference`` (the reference implementation of every standard op),
repeated until nothing changes (a folded Reshape target makes the next Shape static). Not chosen:
- onnxruntime's offline "basic" optimisation also fuses (Conv+BatchNorm, Conv+Add/Mul) and folds
  Transpose/Cast of weights into new initializers under new names, which breaks a plan keyed on weight
  names, and its saved graph may carry onnxruntime-only ops;
- onnxsim is not installed here (and folds weights the same way).
Our pass never folds a node that reads a weight (a float initializer of rank >= 1, what the planner
scores): weights keep their names and values, and the ops that consume them stay. Folding evaluates
the same standard ops on constants, so outputs change by float rounding at most (tested).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ..errors import EdgetqsError

_DEFAULT_DOMAINS = ("", "ai.onnx")
# never evaluated at conversion time: random, or control flow with subgraphs
_NOT_FOLDABLE = {
    "RandomNormal",
    "RandomNormalLike",
    "RandomUniform",
    "RandomUniformLike",
    "Multinomial",
    "Bernoulli",
    "If",
    "Loop",
    "Scan",
    "Constant",
}
_FLOAT = {TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE, TensorProto.BFLOAT16}


class CanonicalizeError(EdgetqsError):
    """The graph cannot be canonicalised as asked (a fixed batch that differs from the one requested)."""


@dataclass(frozen=True)
class CanonReport:
    """What `canonicalize` did.

    Attributes:
        batch: the batch asked for (None: left as it was).
        fixed_inputs: inputs whose symbolic dimension 0 became ``batch``.
        folded: op type -> nodes replaced by constants.
        removed_dead: op type -> nodes removed because nothing used their outputs.
        constants_to_initializers: Constant nodes turned into initializers (integer tensors and float
            scalars only: a float Constant of rank >= 1 stays a node, or the planner would see a new weight).
        new_constants: tensors folding turned into constants (same names): initializers, except float
            tensors of rank >= 1, which become Constant nodes so that the planner sees no new weight.
        removed_initializers: initializers nothing reads any more (weights among them are listed in removed_weights).
        removed_weights: float initializers of rank >= 1 that became unused (their consumers were dead).
        symbolic_inputs: inputs that still have a symbolic dimension.
        nodes_before: node count before.
        nodes_after: node count after.
        passes: folding passes run (until one changed nothing).
    """

    batch: int | None
    fixed_inputs: tuple[str, ...]
    folded: dict[str, int]
    removed_dead: dict[str, int]
    constants_to_initializers: int
    new_constants: tuple[str, ...]
    removed_initializers: tuple[str, ...]
    removed_weights: tuple[str, ...]
    symbolic_inputs: tuple[str, ...]
    nodes_before: int
    nodes_after: int
    passes: int

    def to_dict(self) -> dict:
        """JSON-ready form."""
        return {
            "batch": self.batch,
            "fixed_inputs": list(self.fixed_inputs),
            "folded": dict(self.folded),
            "removed_dead": dict(self.removed_dead),
            "constants_to_initializers": self.constants_to_initializers,
            "new_constants": list(self.new_constants),
            "removed_initializers": list(self.removed_initializers),
            "removed_weights": list(self.removed_weights),
            "symbolic_inputs": list(self.symbolic_inputs),
            "nodes_before": self.nodes_before,
            "nodes_after": self.nodes_after,
            "passes": self.passes,
        }


def _is_weight(init: TensorProto) -> bool:
    return init.data_type in _FLOAT and len(init.dims) >= 1


def _fix_batch(m: onnx.ModelProto, batch: int) -> list[str]:
    inits = {i.name for i in m.graph.initializer}
    fixed = []
    for v in m.graph.input:
        if v.name in inits:
            continue
        dims = v.type.tensor_type.shape.dim
        if not len(dims):
            continue
        if dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            if dims[0].dim_value != batch:
                raise CanonicalizeError(
                    f"input '{v.name}' has a fixed batch of {dims[0].dim_value}, not {batch}; "
                    f"canonicalise with batch={dims[0].dim_value} or batch=None, or re-export with a dynamic batch"
                )
            continue
        dims[0].Clear()
        dims[0].dim_value = batch
        fixed.append(v.name)
    for v in m.graph.output:
        dims = v.type.tensor_type.shape.dim
        if len(dims) and not (dims[0].HasField("dim_value") and dims[0].dim_value > 0):
            dims[0].Clear()
            dims[0].dim_value = batch
    return fixed


def _shapes(m: onnx.ModelProto) -> dict[str, tuple[int | None, ...]]:
    del m.graph.value_info[:]
    try:
        inferred = onnx.shape_inference.infer_shapes(m, data_prop=True)
    except Exception:  # noqa: BLE001 - onnx raises several types on graphs it cannot type; fold what is known
        inferred = m
    m.graph.value_info.extend(inferred.graph.value_info)
    out: dict[str, tuple[int | None, ...]] = {}
    for v in list(inferred.graph.input) + list(inferred.graph.output) + list(inferred.graph.value_info):
        t = v.type.tensor_type
        if t.HasField("shape"):
            out[v.name] = tuple(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim)
    return out


def _const_of(node: onnx.NodeProto) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value":
            return numpy_helper.to_array(a.t)
        if a.name in ("value_float", "value_int", "value_floats", "value_ints"):
            v = helper.get_attribute_value(a)
            return np.array(v, dtype=np.float32 if "float" in a.name else np.int64)
    return None


def _attr(node: onnx.NodeProto, name: str, default: int | None) -> int | None:
    for a in node.attribute:
        if a.name == name:
            return int(a.i)
    return default


class _Folder:
    def __init__(self, m: onnx.ModelProto, max_elements: int) -> None:
        self.m = m
        self.max_elements = max_elements
        self.opset = next((o.version for o in m.opset_import if o.domain in _DEFAULT_DOMAINS), 1)
        graph_inputs = {i.name for i in m.graph.input}
        self.consts: dict[str, np.ndarray] = {}
        self.protected: set[str] = set()
        for init in m.graph.initializer:
            if init.name in graph_inputs:
                continue  # overridable by a feed: not a constant
            if _is_weight(init):
                self.protected.add(init.name)
            elif init.data_location != TensorProto.EXTERNAL:
                self.consts[init.name] = numpy_helper.to_array(init)
        for n in m.graph.node:
            if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS:
                v = _const_of(n)
                if v is not None:
                    self.consts[n.output[0]] = v
        self.shapes = _shapes(m)
        self.partial: dict[str, list[int | None]] = {}  # shape vectors with some static entries

    def _shape_value(self, node: onnx.NodeProto) -> np.ndarray | None:
        shape = self.shapes.get(node.input[0])
        if shape is None:
            return None
        start, end = _attr(node, "start", 0), _attr(node, "end", None)
        dims = list(shape)[slice(start, end)]
        known = [d for d in dims if d is not None]
        if len(known) == len(dims):
            return np.array(int(np.prod(known)) if node.op_type == "Size" else known, np.int64)
        if node.op_type == "Size":
            return None
        self.partial[node.output[0]] = dims
        return None

    def _partial_pick(self, node: onnx.NodeProto) -> np.ndarray | None:
        """Gather/Slice of the static part of a partly static shape vector."""
        dims = self.partial.get(node.input[0])
        if dims is None:
            return None
        if node.op_type == "Gather" and _attr(node, "axis", 0) == 0 and node.input[1] in self.consts:
            idx = self.consts[node.input[1]]
            picked = np.asarray(dims, dtype=object)[idx]
            if all(d is not None for d in np.ravel(picked)):
                return np.asarray(picked, dtype=np.int64)
            return None
        if node.op_type == "Slice" and self.opset >= 10 and all(i in self.consts for i in node.input[1:] if i):
            starts, ends = self.consts[node.input[1]], self.consts[node.input[2]]
            steps = self.consts[node.input[4]] if len(node.input) > 4 and node.input[4] else np.array([1])
            if starts.size != 1:
                return None
            sl = slice(int(starts[0]), int(min(ends[0], 2**62)) if ends[0] >= 0 else int(ends[0]), int(steps[0]))
            picked = dims[sl]
            if all(d is not None for d in picked):
                return np.array(picked, np.int64)
            if picked:
                self.partial[node.output[0]] = picked
        return None

    def fold_pass(self) -> tuple[dict[str, int], set[int]]:
        from onnx.reference import ReferenceEvaluator

        folded: dict[str, int] = {}
        done: set[int] = set()
        outputs = {o.name for o in self.m.graph.output}
        for k, node in enumerate(self.m.graph.node):
            if node.domain not in _DEFAULT_DOMAINS or node.op_type in _NOT_FOLDABLE or any(o in outputs for o in node.output):
                continue
            if any(i in self.protected for i in node.input):
                continue  # never fold a weight into something else: its name is what a plan refers to
            values: list[np.ndarray] | None = None
            if node.op_type in ("Shape", "Size"):
                v = self._shape_value(node)
                values = None if v is None else [v]
            elif all((not i) or i in self.consts for i in node.input):
                try:
                    ev = ReferenceEvaluator(node, opsets={"": self.opset})
                    res = ev.run(None, {i: self.consts[i] for i in node.input if i})
                    values = [np.asarray(r) for r in res]
                except Exception:  # noqa: BLE001 - an op the reference cannot evaluate: leave the node
                    values = None
            elif node.op_type in ("Gather", "Slice"):
                v = self._partial_pick(node)
                values = None if v is None else [v]
            if values is None or sum(v.size for v in values) > self.max_elements:
                continue
            for o, v in zip(node.output, values):
                if o:
                    self.consts[o] = v
            folded[node.op_type] = folded.get(node.op_type, 0) + 1
            done.add(k)
        return folded, done


def _constants_to_initializers(m: onnx.ModelProto) -> int:
    """Constant nodes -> initializers of the same name, except float tensors of rank >= 1."""
    keep, moved = [], 0
    for n in m.graph.node:
        v = _const_of(n) if n.op_type == "Constant" and n.domain in _DEFAULT_DOMAINS else None
        if v is None or (np.issubdtype(v.dtype, np.floating) and v.ndim >= 1):
            keep.append(n)
            continue
        m.graph.initializer.append(numpy_helper.from_array(v, n.output[0]))
        moved += 1
    del m.graph.node[:]
    m.graph.node.extend(keep)
    return moved


def _remove_dead(m: onnx.ModelProto) -> dict[str, int]:
    removed: dict[str, int] = {}
    while True:
        used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
        keep = [n for n in m.graph.node if any(o and o in used for o in n.output)]
        if len(keep) == len(m.graph.node):
            return removed
        for n in m.graph.node:
            if not any(o and o in used for o in n.output):
                removed[n.op_type] = removed.get(n.op_type, 0) + 1
        del m.graph.node[:]
        m.graph.node.extend(keep)


def canonicalize(
    proto: onnx.ModelProto, batch: int | None = None, max_elements: int = 1 << 20, max_passes: int = 20
) -> tuple[onnx.ModelProto, CanonReport]:
    """Fix the batch, infer shapes, fold constant computations, remove dead nodes.

    The input is not modified. Weight initializers keep their names; a node that reads one is never folded.

    Args:
        proto: the ONNX model (external data loaded, if any).
        batch: the batch to give inputs whose dimension 0 is symbolic; None leaves it symbolic (shape
            arithmetic on static dimensions is still folded).
        max_elements: a node whose folded outputs would hold more elements is left as it is.
        max_passes: upper bound on fold/infer rounds.

    Returns:
        (the canonical model, what was done).

    Raises:
        CanonicalizeError: ``batch`` differs from an input's fixed dimension 0, or ``batch`` < 1.
    """
    if batch is not None and batch < 1:
        raise CanonicalizeError(f"batch {batch}; expected a positive integer or None")
    m = onnx.ModelProto()
    m.CopyFrom(proto)
    before = len(m.graph.node)
    fixed = _fix_batch(m, batch) if batch is not None else []
    dead = _remove_dead(m)  # first, so nothing is evaluated for nothing
    folded: dict[str, int] = {}
    new_consts: list[str] = []
    passes = 0
    while passes < max_passes:
        passes += 1
        f = _Folder(m, max_elements)
        counts, done = f.fold_pass()
        if not done:
            break
        for op, c in counts.items():
            folded[op] = folded.get(op, 0) + c
        produced = {o for k in done for o in m.graph.node[k].output if o}
        keep = [n for k, n in enumerate(m.graph.node) if k not in done]
        used = {i for n in keep for i in n.input}
        constant_nodes = []
        for name in sorted(produced & used):
            value = np.ascontiguousarray(f.consts[name])
            if np.issubdtype(value.dtype, np.floating) and value.ndim >= 1:
                constant_nodes.append(
                    helper.make_node("Constant", [], [name], name=f"{name}/folded", value=numpy_helper.from_array(value, name))
                )
            else:
                m.graph.initializer.append(numpy_helper.from_array(value, name))
            new_consts.append(name)
        del m.graph.node[:]
        m.graph.node.extend(constant_nodes + keep)
        for op, c in _remove_dead(m).items():
            dead[op] = dead.get(op, 0) + c
    moved = _constants_to_initializers(m)
    used = {i for n in m.graph.node for i in n.input} | {o.name for o in m.graph.output}
    graph_inputs = {i.name for i in m.graph.input}
    removed_inits = [i for i in m.graph.initializer if i.name not in used and i.name not in graph_inputs]
    keep_inits = [i for i in m.graph.initializer if i.name in used or i.name in graph_inputs]
    del m.graph.initializer[:]
    m.graph.initializer.extend(keep_inits)
    _shapes(m)  # leave value_info of the final graph for converters
    symbolic = tuple(
        v.name
        for v in m.graph.input
        if v.name not in {i.name for i in m.graph.initializer}
        and any(not (d.HasField("dim_value") and d.dim_value > 0) for d in v.type.tensor_type.shape.dim)
    )
    report = CanonReport(
        batch,
        tuple(fixed),
        folded,
        dead,
        moved,
        tuple(n for n in new_consts if n in used),
        tuple(i.name for i in removed_inits),
        tuple(i.name for i in removed_inits if _is_weight(i)),
        symbolic,
        before,
        len(m.graph.node),
        passes,
    )
    return m, report
