"""Which float initializers are weights, and what to call them.

A real export holds more float initializers than learned weights: attention masks with ``-inf``
entries, integer ranges (``arange``), all-zero tensors, index and shape arithmetic folded into
constants by the exporter. Perturbing them is meaningless (noise added to ``-inf`` is NaN) and
quantizing them saves nothing worth the risk, so by default they are *constants*: not scored, not
planned, stored exactly in every artifact, and listed with the reason (`constant_reason`). A user's
``--include`` / ``--exclude`` rules (an exact name or ``re:REGEX``, matched against the raw name and
the readable path) override the rules. A NaN in a tensor that is a weight is an error naming it.

Exporters name folded tensors after the op that made them (``val_751``, ``linear_14``); the dynamo
exporter records each node's module scope in its metadata (``pkg.torch.onnx.name_scopes``,
``namespace``), and the legacy one in the node name (``/block/q/MatMul``). `readable` names a weight
by that scope and its role at the first consumer, e.g. ``block.q (MatMul node_MatMul_20) weight``,
with a dotted path (``block.q.weight``) that block granularity groups by.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..errors import BadInputError
from .results import Frozen

# (op type, input index) positions that read a value as a shape, an index, a count or a condition
_SHAPE_INPUTS: dict[str, tuple[int, ...]] = {
    "Reshape": (1,),
    "Expand": (1,),
    "Tile": (1,),
    "Slice": (1, 2, 3, 4),
    "Gather": (1,),
    "GatherElements": (1,),
    "GatherND": (1,),
    "ScatterND": (1,),
    "ScatterElements": (1,),
    "Range": (0, 1, 2),
    "ConstantOfShape": (0,),
    "Where": (0,),
    "OneHot": (0, 1),
    "Resize": (1, 2, 3),
    "Pad": (1, 3),
    "TopK": (1,),
    "Unsqueeze": (1,),
    "Squeeze": (1,),
    "ReduceSum": (1,),
    "ReduceMean": (1,),
    "ReduceMax": (1,),
    "ReduceMin": (1,),
    "Split": (1,),
    "CumSum": (1,),
    "Trilu": (1,),
}
# ops whose output is a boolean or an integer whatever the input: a float reaching them is used as a mask or index
_MASKING_OPS = {"Equal", "Less", "Greater", "LessOrEqual", "GreaterOrEqual", "Not", "And", "Or", "Xor", "IsInf", "IsNaN", "Shape", "Size"}
_FLOAT_ELEM = {1, 10, 11, 16}  # onnx float, float16, double, bfloat16

# the role an initializer plays at its first consumer: (op, input index) -> word
_ROLES: dict[tuple[str, int], str] = {
    ("MatMul", 1): "weight",
    ("MatMul", 0): "weight",
    ("Gemm", 1): "weight",
    ("Gemm", 0): "weight",
    ("Gemm", 2): "bias",
    ("Conv", 1): "weight",
    ("Conv", 2): "bias",
    ("ConvTranspose", 1): "weight",
    ("ConvTranspose", 2): "bias",
    ("LayerNormalization", 1): "weight",
    ("LayerNormalization", 2): "bias",
    ("BatchNormalization", 1): "weight",
    ("BatchNormalization", 2): "bias",
    ("InstanceNormalization", 1): "weight",
    ("InstanceNormalization", 2): "bias",
    ("Gather", 0): "embedding",
    ("GRU", 1): "W",
    ("GRU", 2): "R",
    ("GRU", 3): "B",
    ("LSTM", 1): "W",
    ("LSTM", 2): "R",
    ("LSTM", 3): "B",
    ("RNN", 1): "W",
    ("RNN", 2): "R",
    ("RNN", 3): "B",
}
_WEIGHT_SLOTS = {("MatMul", 1), ("MatMul", 0), ("Gemm", 1), ("Gemm", 0), ("Conv", 1), ("ConvTranspose", 1)}


@dataclass(frozen=True)
class Use:
    """One place an initializer is read: the node, its op, the input index."""

    node: Any  # onnx.NodeProto
    op: str
    index: int


def uses_of(graph: Any, names: Iterable[str]) -> dict[str, list[Use]]:
    """Every (node, input index) reading each of ``names``, in graph order."""
    want = set(names)
    out: dict[str, list[Use]] = {n: [] for n in want}
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name in want:
                out[name].append(Use(node, node.op_type, j))
    return out


def shape_only_values(graph: Any) -> set[str]:
    """Values (tensor names) that reach only shape, index or mask positions, directly or through other ops.

    A value is shape-only when every reader is a shape/index input of its op (`_SHAPE_INPUTS`), an op
    whose output is a mask or an integer (comparisons, ``Shape``, a ``Cast`` to a non-float type), or an
    op all of whose outputs are shape-only. A graph output is never shape-only. Nodes are in topological
    order (an ONNX requirement), so one backwards pass settles every value.
    """
    readers: dict[str, list[tuple[Any, int]]] = {}
    for node in graph.node:
        for j, name in enumerate(node.input):
            if name:
                readers.setdefault(name, []).append((node, j))
    outputs = {o.name for o in graph.output}
    only: set[str] = set()
    node_only: dict[int, bool] = {}
    for node in reversed(graph.node):
        outs = [o for o in node.output if o]
        node_only[id(node)] = bool(outs) and all(o in only for o in outs)
        for name in node.input:
            if not name or name in only or name in outputs:
                continue
            if all(_reads_as_shape(n, j, node_only) for n, j in readers.get(name, [])) and readers.get(name):
                only.add(name)
    return only


def _reads_as_shape(node: Any, j: int, node_only: dict[int, bool]) -> bool:
    if j in _SHAPE_INPUTS.get(node.op_type, ()):
        return True
    if node.op_type in _MASKING_OPS:
        return True
    if node.op_type == "Cast":
        to = next((a.i for a in node.attribute if a.name == "to"), 1)
        if to not in _FLOAT_ELEM:
            return True
    return node_only.get(id(node), False)


def constant_reason(arr: np.ndarray, uses: Sequence[Use], shape_only: bool) -> str | None:
    """Why a float initializer is a constant of the graph rather than a weight (None: it is a weight).

    Raises:
        BadModelError: NaN values, or +/-inf in the weight input of a MatMul/Gemm/Conv (a broken weight,
            not a mask): the message names the tensor and how to go on.
    """
    finite = np.isfinite(arr)
    if not finite.all():
        if np.isnan(arr).any():
            return "nan"
        if any((u.op, u.index) in _WEIGHT_SLOTS for u in uses):
            return "inf-weight"
        return f"holds {int((~finite).sum()):,} infinite entries (an attention mask)"
    if shape_only:
        return "feeds only shape, index or mask arithmetic"
    if arr.size > 1 and not arr.any():
        return "all zeros"
    if arr.size >= 2:
        flat = arr.astype(np.float64).ravel()
        if np.array_equal(flat, np.round(flat)):
            step = np.diff(flat)
            if step[0] != 0 and np.all(step == step[0]):
                return "an integer range (arange)"
    return None


def scope_of(node: Any) -> str:
    """The module scope the exporter recorded for a node (``block.q``), or ''.

    Dynamo exporter: ``pkg.torch.onnx.name_scopes`` (a Python list literal of each enclosing module's full
    name, root '' first, the node's own op name last: ``['', 'block', 'block.q', 'linear_2']``), else
    ``namespace`` (``: Root/block: Block/block.q: Linear/linear_2: aten.linear``). Legacy exporter: a
    node name such as ``/block/q/MatMul``."""
    meta = {p.key: p.value for p in node.metadata_props}
    text = meta.get("pkg.torch.onnx.name_scopes")
    if text:
        try:
            parts = [str(p) for p in ast.literal_eval(text)]
        except (ValueError, SyntaxError):
            parts = []
        parts = [p for p in parts[:-1] if p]
        if parts:
            return parts[-1]
    ns = meta.get("namespace")
    if ns:
        segs = [s.split(":", 1)[0].strip() for s in ns.split("/")]
        parts = [s for s in segs[1:-1] if s]
        if parts:
            return parts[-1]
    name = node.name or ""
    if name.startswith("/") and name.count("/") >= 2:
        parts = [p for p in name.split("/")[1:-1] if p]
        if parts:
            return ".".join(parts)
    return ""


def _generated(name: str) -> bool:
    """Whether an initializer name was made up by the exporter: ``val_751``, ``linear_14``, ``_to_copy_16``
    (dynamo), ``onnx::MatMul_140`` and ``/block/Constant_output_0`` (legacy). A module path (``block.q.bias``)
    or a root buffer's own name (``mask``) is not."""
    return "::" in name or name.startswith("/") or re.fullmatch(r"_?[A-Za-z]+(?:_[A-Za-z]+)*_\d+", name) is not None


def readable(name: str, uses: Sequence[Use]) -> tuple[str, str]:
    """(label, dotted path) of an initializer.

    A name that already is a module path (``block.q.bias``) is kept as both. A generated one
    (``val_17``) is named by its first consumer's module scope, op, node and its role there:
    ``block.q (MatMul node_MatMul_20) weight`` and path ``block.q.weight``; without a scope,
    ``MatMul node_MatMul_20 weight`` and the raw name as path."""
    if not _generated(name) or not uses:
        return name, name
    u = uses[0]
    role = _ROLES.get((u.op, u.index)) or ("bias" if u.op == "Add" else "scale" if u.op == "Mul" else f"input {u.index}")
    node = u.node.name or (u.node.output[0] if u.node.output else "")
    scope = scope_of(u.node)
    if scope:
        return f"{scope} ({u.op} {node}) {role}", f"{scope}.{role.replace(' ', '')}"
    return f"{u.op} {node} {role}", name


class ExcludedTensor(Frozen):
    """A float initializer kept out of the weights (scores.json, plan.json): stored exactly, never scored."""

    name: str
    label: str
    shape: tuple[int, ...]
    n_params: int
    reason: str


def excluded_tensors(model: Any) -> tuple[ExcludedTensor, ...]:
    """The model's constants (`edgetqs.core.model.Model.constants`) as result-file records."""
    return tuple(ExcludedTensor(name=c.name, label=c.label, shape=c.shape, n_params=c.size, reason=c.reason) for c in model.constants)


# ------------------------------------------------------------------ user rules


def check_rules(rules: Sequence[str], what: str) -> tuple[str, ...]:
    """Validate ``--include`` / ``--exclude`` rules (exact names or ``re:REGEX``).

    Raises:
        BadInputError: an empty rule or a regex that does not compile.
    """
    out = []
    for r in rules:
        r = str(r).strip()
        if not r or r == "re:":
            raise BadInputError(f"{what} rule '{r}' is empty; give a tensor name or re:REGEX")
        if r.startswith("re:"):
            try:
                re.compile(r[3:])
            except re.error as exc:
                raise BadInputError(f"{what} rule '{r}': bad regex ({exc})") from None
        out.append(r)
    return tuple(out)


def rule_matches(rule: str, name: str, path: str) -> bool:
    """An exact rule names the raw initializer or its readable path; ``re:`` searches both."""
    if rule.startswith("re:"):
        rx = rule[3:]
        return bool(re.search(rx, name) or re.search(rx, path))
    return rule in (name, path)


__all__ = [
    "ExcludedTensor",
    "Use",
    "check_rules",
    "constant_reason",
    "excluded_tensors",
    "readable",
    "rule_matches",
    "scope_of",
    "shape_only_values",
    "uses_of",
]
