"""Window centring: a dense layer over a flattened window sees each variable's level removed.

A dynamic-range kernel (XNNPACK's qd8 FULLY_CONNECTED) quantizes its input per call with one asymmetric 8-bit
scale over the whole input row (zero always in range). When the row is a flattened window of several variables,
the step is set by how far apart the variables' levels sit, and a variable that barely moves within the window
rounds the same way at every step of it and in every window of a rollout: the layer sums those errors coherently
and the rollout drifts. On the station example the first layer quantized per call took the rollout from 0.034 to
0.138 although its one-step error rose only from 0.0042 to 0.0065.

The rewrite subtracts each variable's last value from the window before the dense layer and adds the levels back
through a small float dense layer whose weight is the layer's weight summed over the window's steps::

    W x  =  W (x - 1 (x) x_last)  +  (sum_t W_t) x_last

Centred, a slow variable's values sit near zero, which rounds exactly. With ``sum_t W_t`` summed from the planned
(quantized) weight it is an identity of the planned model: weight-only, the artifact computes what the plan
simulated; only what the per-call quantizer sees changes. It costs a Slice, a Sub, two Reshapes, a small MatMul and
an Add, so the TFLite route offers it as a rung of the activation ladder (dynamic -> centred -> float) that TQS takes
only where plain dynamic range misses the goal (`edgetqs.runtimes.tflite`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np


@dataclass(frozen=True)
class Site:
    """A Gemm/MatMul with a constant weight whose input is a flattened [batch, a, b] window (a, b >= 2), one of them
    the window's steps."""

    node: str  # the dense node's name (or its output's)
    weight: str  # its weight initializer
    window: str  # the [batch, a, b] tensor it flattens
    shape: tuple[int, int]  # (a, b)
    trans_b: bool  # Gemm transB: the weight is [out, in]
    axis: int  # 1 or 2: the axis of the window's steps
    batch: int = 1  # the graph's fixed batch (a window per row)
    # the layer reads Concat(..., window flattened, ...) along its features (covariates beside the window): the Concat
    # node and the window's first column in the layer's input; "" when the layer reads the flattened window itself
    concat: str = ""
    offset: int = 0
    flat: str = ""  # the flattened window's tensor


@dataclass(frozen=True)
class Centred:
    """One window centred, as convert.json records it."""

    node: str
    weight: str
    window: str
    axis: int  # 1 or 2: the axis whose last slice is subtracted (the window's steps)
    steps: int
    variables: int
    level_weight: str  # the added [variables, out] float weight
    level_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def sites(proto: Any, steps: int, weights: set[str] | None = None) -> list[Site]:
    """The dense layers of a fixed-batch graph that read a flattened [batch, a, b] window of ``steps`` steps along a or b
    and at least two variables along the other, alone or concatenated with other features (a time-of-day forcing, say)
    (``weights``: only these layers). When a == b, a is the steps."""
    import onnx
    from onnx import helper

    from .canonicalize import _shapes

    inferred = onnx.ModelProto()
    inferred.CopyFrom(proto)  # `_shapes` refreshes the value_info of the graph it is given
    shapes = _shapes(inferred)
    inits = {i.name for i in proto.graph.initializer}
    made = {o: n for n in proto.graph.node for o in n.output}
    found = []
    for n in proto.graph.node:
        if n.op_type not in ("Gemm", "MatMul") or len(n.input) < 2 or n.input[1] not in inits:
            continue
        if weights is not None and n.input[1] not in weights:
            continue
        attrs = {at.name: helper.get_attribute_value(at) for at in n.attribute}
        if n.op_type == "Gemm" and (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0):
            continue
        src = made.get(n.input[0])
        parts: list[tuple[str, int]] = [(n.input[0], 0)]  # (a tensor the layer reads, its first column)
        concat = ""
        if src is not None and src.op_type == "Concat":
            cs = shapes.get(src.output[0])
            axis_c = next((int(helper.get_attribute_value(at)) for at in src.attribute if at.name == "axis"), 0)
            if not cs or len(cs) != 2 or axis_c not in (1, -1):
                continue
            widths = [(shapes.get(t) or (None,))[-1] for t in src.input]
            if any(not isinstance(w, int) for w in widths):
                continue
            starts = np.cumsum([0, *widths[:-1]]).tolist()
            parts, concat = [(t, int(o)) for t, o in zip(src.input, starts)], src.name or src.output[0]
        for tensor, offset in parts:
            site = _window_site(n, tensor, offset, concat, made, shapes, steps, bool(attrs.get("transB", 0)))
            if site is not None:
                found.append(site)
                break  # one window per layer
    return found


def _window_site(
    n: Any,
    tensor: str,
    offset: int,
    concat: str,
    made: dict[str, Any],
    shapes: dict[str, tuple[int | None, ...]],
    steps: int,
    trans_b: bool,
) -> Site | None:
    """The site when ``tensor`` is a Reshape/Flatten of a [batch, a, b] window with ``steps`` along a or b."""
    flat = made.get(tensor)
    if flat is None or flat.op_type not in ("Reshape", "Flatten"):
        return None
    zs, ys = shapes.get(flat.input[0]), shapes.get(flat.output[0])
    if not zs or not ys or None in zs or None in ys or len(zs) != 3:
        return None
    a, b = int(zs[1] or 0), int(zs[2] or 0)
    if ys != (zs[0], a * b) or a < 2 or b < 2 or steps not in (a, b):
        return None
    axis = 1 if a == steps else 2
    return Site(n.name or n.output[0], n.input[1], flat.input[0], (a, b), trans_b, axis, int(zs[0] or 1), concat, offset, tensor)


def centre(proto: Any, found: list[Site], values: dict[str, np.ndarray] | None = None) -> tuple[Any, list[Centred]]:
    """The graph with every site in ``found`` centred, and what was done.

    ``values``: weight name -> the values the runtime computes with (the plan's dequantized weights), summed into the
    level weight so that the rewrite is an identity of the planned model; default the graph's float weights."""
    import onnx
    from onnx import helper, numpy_helper

    m = onnx.ModelProto()
    m.CopyFrom(proto)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    done = []
    for s in found:
        axis = s.axis
        a, b = s.shape
        steps, nvar = (a, b) if axis == 1 else (b, a)
        n = next(x for x in g.node if (x.name or x.output[0]) == s.node)
        w = values[s.weight] if values is not None and s.weight in values else numpy_helper.to_array(inits[s.weight])
        w = np.asarray(w, np.float32)
        w_in = w.T if s.trans_b else w  # [in, out]; the window's rows in its row-major order from s.offset
        level = w_in[s.offset : s.offset + a * b].reshape(a, b, -1).sum(axis=axis - 1)  # summed over the steps: [variables, out]
        k = f"{s.node}/centre"
        names = {p: f"{k}/{p}" for p in ("start", "end", "axis", "flat", "level_shape", "level_weight")}
        g.initializer.extend(
            [
                numpy_helper.from_array(np.array([steps - 1], np.int64), names["start"]),
                numpy_helper.from_array(np.array([steps], np.int64), names["end"]),
                numpy_helper.from_array(np.array([axis], np.int64), names["axis"]),
                numpy_helper.from_array(np.array([s.batch, a * b], np.int64), names["flat"]),
                numpy_helper.from_array(np.array([s.batch, nvar], np.int64), names["level_shape"]),
                numpy_helper.from_array(level.astype(np.float32), names["level_weight"]),
            ]
        )
        out = n.output[0]
        before = [
            helper.make_node("Slice", [s.window, names["start"], names["end"], names["axis"]], [f"{k}/last"], name=f"{k}/slice"),
            helper.make_node("Sub", [s.window, f"{k}/last"], [f"{k}/centred"], name=f"{k}/sub"),
            helper.make_node("Reshape", [f"{k}/centred", names["flat"]], [f"{k}/centred_flat"], name=f"{k}/reshape"),
            helper.make_node("Reshape", [f"{k}/last", names["level_shape"]], [f"{k}/level"], name=f"{k}/level_reshape"),
        ]
        after = [
            helper.make_node("MatMul", [f"{k}/level", names["level_weight"]], [f"{k}/level_out"], name=f"{k}/level_matmul"),
            helper.make_node("Add", [f"{k}/dense", f"{k}/level_out"], [out], name=f"{k}/add"),
        ]
        if s.concat:  # the covariates beside the window stay as they are: a copy of the Concat reads the centred window
            cat = next(x for x in g.node if (x.name or x.output[0]) == s.concat)
            ins = [f"{k}/centred_flat" if t == s.flat else t for t in cat.input]
            before.append(helper.make_node("Concat", ins, [f"{k}/centred_cat"], name=f"{k}/concat", axis=1))
            n.input[0] = f"{k}/centred_cat"
            used = {t for x in g.node if x is not n for t in x.input} | {o.name for o in g.output}
            if cat.output[0] not in used:  # the layer was its only reader
                g.node.remove(cat)
        else:
            n.input[0] = f"{k}/centred_flat"
        n.output[0] = f"{k}/dense"
        nodes = list(g.node)
        i = nodes.index(n)
        del g.node[:]
        g.node.extend([*nodes[:i], *before, n, *after, *nodes[i + 1 :]])
        done.append(Centred(s.node, s.weight, s.window, axis, steps, nvar, names["level_weight"], int(level.size) * 4))
    onnx.checker.check_model(m)
    return m, done
