"""GPTQ rounding (Frantar et al. 2022): integers chosen against the layer's input statistics.

Round-to-nearest (RTN) rounds every weight on its own. GPTQ rounds the weight matrix one input
column at a time and, after each column, moves its rounding error onto the columns not yet rounded,
in the direction that keeps the layer's *output* on the calibration inputs closest (the Optimal Brain
Surgeon update with H = 2/n X^T X, X the rows that multiply the weight). It stores the same integers
and scales structure as RTN, so a plan's bytes and a converter's layout do not change.

Choices made here (the reference code differs where said):

- Scales are RTN's: per tensor, per output channel, or per block of N along the reduction axis, each
  fixed from the ORIGINAL weights (``quantize_int``) before any column is updated. The reference
  recomputes a group's scale from the already-updated weights when it reaches the group; fixing them
  keeps bytes, scale layout and scale values identical to RTN, so GPTQ and RTN differ only in the
  integers and compare at matched bytes.
- The integer grid is RTN's symmetric [-(2^(b-1)-1), 2^(b-1)-1] by default (TFLite's spec for int8
  weights; RTN never reaches -2^(b-1) either). ``full_range=True`` also allows -2^(b-1).
- A dead input (diag(H) = 0: never nonzero in calibration) keeps its weights and is rounded to
  nearest, uncoupled from the other columns, and the damping level is the mean of the live inputs'
  diag(H) only, so the other columns get exactly what they would without it. The reference zeroes
  such weights, which is harmless on the calibration data but wrong for an autoregressive model
  whose rollout may wake the input up.
- ``act_order`` visits columns by decreasing diag(H); scales stay those of each column's original
  block, so it needs no regrouping (the reference's "static groups").

Capture (``layer_hessians``) uses onnxruntime: the tensor that multiplies each weight becomes an
extra graph output, the calibration feeds run, and X^T X accumulates in float64 over every row
(batch, time, spatial position). Grouped convolutions give one Hessian per group ([g, K, K]).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.model import layout_of
from ..core.quantize import Layout, Precision, QuantizedTensor, effective, fake_quant, quantize_int
from ..errors import BadInputError, BadModelError

WeightSpec = tuple[str, int, dict[str, Any]]
"""How a weight is consumed, as ``Model._consumer`` records it: (op_type, input index, attrs)."""

GPTQ_BITS = range(2, 9)


# ----------------------------------------------------------------------------------------------
# The algorithm
# ----------------------------------------------------------------------------------------------


def gptq_quantize(
    w: np.ndarray,
    hessian: np.ndarray,
    precision: Precision,
    layout: Layout,
    *,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
    full_range: bool = False,
) -> QuantizedTensor:
    """Quantize one weight with GPTQ, on RTN's scale grid.

    The weight is viewed as [out_channels, K]: the output axis first, then the reduction axis, then
    any remaining axes in order (a Conv weight [O, I, kh, kw] is [O, I*kh*kw]); ``hessian`` must
    index its K columns in that order, as ``layer_hessians`` does.

    Args:
        w: the float weight, in its stored layout.
        hessian: [K, K], or [g, K, K] for a grouped Conv (group i owns output channels
            i*O/g .. (i+1)*O/g - 1); symmetric positive semi-definite, e.g. 2/n X^T X.
        precision: int2..int8 per tensor, channel or block (``effective`` is applied as in RTN).
        layout: output and reduction axes of ``w`` (``Model.layout``); the reduction axis is required.
        damp: fraction of mean(diag(H)) added to the diagonal before inversion (the paper's 1%).
        block: columns per lazy batch update; changes speed, not the result (up to float rounding).
        act_order: quantize columns in order of decreasing diag(H).
        full_range: allow -2^(b-1) as well (default: RTN's symmetric grid).

    Returns:
        A ``QuantizedTensor`` with the integers in ``w``'s layout and RTN's scale, axis and block size.

    Raises:
        BadInputError: a float/int16/int32 precision, no reduction axis, a Hessian of the wrong shape
            or not finite, negative diagonal, bad ``damp``/``block``, or a Hessian still singular
            after damping.
    """
    w = np.asarray(w)
    p = effective(precision, w.shape, layout)
    if p.kind != "int" or p.bits not in GPTQ_BITS:
        raise BadInputError(f"GPTQ precision {p.name}; expected int2..int8 (per tensor, channel or block): use quantize_int for others")
    if w.ndim < 2 or layout.in_axis is None or layout.in_axis == layout.out_axis:
        raise BadInputError(
            f"weight of shape {w.shape} with layout {layout} has no reduction axis apart from its output axis; "
            "round it with quantize_int (RTN)"
        )
    if not (math.isfinite(damp) and damp >= 0):
        raise BadInputError(f"damp {damp}; expected a finite fraction >= 0, e.g. 0.01")
    if block < 1:
        raise BadInputError(f"block {block}; expected a number of columns >= 1, e.g. 128")
    rtn = quantize_int(w, p, layout)
    # the scale of every element, broadcast by the same code that dequantizes RTN's integers
    s_full = QuantizedTensor(np.ones(w.shape, np.int8), rtn.scale, rtn.axis, rtn.block_size, rtn.precision).dequantize()
    w2, moved = _to_2d(np.asarray(w, np.float64), layout)
    s2, _ = _to_2d(s_full.astype(np.float64), layout)
    h = _check_hessian(hessian, w2.shape)
    qmax = 2 ** (p.bits - 1) - 1
    qmin = -qmax - 1 if full_range else -qmax
    q2 = np.zeros_like(w2)
    rows = w2.shape[0] // h.shape[0]
    for g in range(h.shape[0]):
        sl = slice(g * rows, (g + 1) * rows)
        q2[sl], _ = _obs_quantize(w2[sl], s2[sl], h[g], qmin, qmax, damp=damp, block=block, act_order=act_order)
    q = _from_2d(q2, moved, layout).astype(np.int8)
    return QuantizedTensor(q, rtn.scale, rtn.axis, rtn.block_size, rtn.precision)


def _to_2d(a: np.ndarray, layout: Layout) -> tuple[np.ndarray, tuple[int, ...]]:
    """[out, reduction * rest]: output axis first, reduction axis second, other axes after it in order."""
    assert layout.in_axis is not None  # checked by the caller
    moved = np.moveaxis(a, (layout.out_axis, layout.in_axis), (0, 1))
    return np.ascontiguousarray(moved.reshape(moved.shape[0], -1)), moved.shape


def _from_2d(a2: np.ndarray, moved_shape: tuple[int, ...], layout: Layout) -> np.ndarray:
    assert layout.in_axis is not None
    return np.moveaxis(a2.reshape(moved_shape), (0, 1), (layout.out_axis, layout.in_axis))


def _check_hessian(hessian: np.ndarray, w2_shape: tuple[int, ...]) -> np.ndarray:
    """[g, K, K] float64, validated against the [O, K] view of the weight."""
    h = np.asarray(hessian, np.float64)
    o, k = w2_shape
    if h.ndim == 2:
        h = h[None]
    if h.ndim != 3 or h.shape[1:] != (k, k) or o % h.shape[0]:
        raise BadInputError(
            f"Hessian of shape {np.shape(hessian)} for a weight viewed as [{o}, {k}]; expected [{k}, {k}] "
            f"or [g, {k}, {k}] with g dividing {o} (from layer_hessians for this weight and layout)"
        )
    if not np.isfinite(h).all():
        raise BadInputError("the Hessian has non-finite entries: the calibration activations overflowed; check the feeds")
    if (np.diagonal(h, axis1=1, axis2=2) < 0).any():
        raise BadInputError("the Hessian has a negative diagonal entry; expected 2/n X^T X (positive semi-definite)")
    return h


def _obs_quantize(
    w: np.ndarray,
    s: np.ndarray,
    h: np.ndarray,
    qmin: int,
    qmax: int,
    *,
    damp: float,
    block: int,
    act_order: bool,
    n_columns: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """GPTQ on one [O, K] problem with per-element scales ``s`` and Hessian ``h`` [K, K].

    Returns (integers [O, K] as float64, the working weights): after ``n_columns`` columns (all by
    default) the working weights hold, in the columns not yet rounded, the compensated values GPTQ
    would round next (what the least-squares check in the tests compares).
    """
    o, k = np.shape(w)
    h = np.array(h, np.float64)
    dead = np.diag(h) == 0
    # damping from the live inputs only, so a dead input changes nothing for the others
    level = float(np.mean(np.diag(h)[~dead])) if not dead.all() else 1.0
    h[dead, :] = 0.0
    h[:, dead] = 0.0
    h[dead, dead] = 1.0  # uncoupled unit column: its weights are rounded to nearest, nothing moves onto or off it
    perm = np.argsort(-np.diag(h), kind="stable") if act_order else np.arange(k)
    # columns as contiguous rows ([K, O]): each step reads one column and updates the next ones
    wt = np.array(np.asarray(w, np.float64).T[perm], order="C")
    st = np.asarray(s, np.float64).T[perm]
    h = h[np.ix_(perm, perm)]
    h[np.diag_indices(k)] += damp * level
    u = _upper_cholesky_of_inverse(h, damp)
    qt = np.zeros_like(wt)
    stop = k if n_columns is None else n_columns
    for i1 in range(0, stop, block):
        i2 = min(i1 + block, k)
        err = np.zeros((i2 - i1, o))
        for j in range(i1, min(i2, stop)):
            qj = np.clip(np.round(wt[j] / st[j]), qmin, qmax)
            qt[j] = qj
            # OBS: the rounding error of column j, spread over the later columns of this block now
            # (row j of the upper Cholesky factor of H^-1 holds the update of the remaining columns)
            e = (wt[j] - qj * st[j]) / u[j, j]
            wt[j + 1 : i2] -= np.outer(u[j, j + 1 : i2], e)
            err[j - i1] = e
        # lazy batch: the later blocks receive this block's errors in one matrix product
        wt[i2:] -= u[i1:i2, i2:].T @ err
    inv = np.argsort(perm)
    return qt[inv].T, wt[inv].T


def _upper_cholesky_of_inverse(h: np.ndarray, damp: float) -> np.ndarray:
    """U upper triangular with U^T U = H^-1 (H symmetric positive definite)."""
    import scipy.linalg

    k = h.shape[0]
    try:
        low = scipy.linalg.cholesky(h, lower=True)
        hinv = scipy.linalg.cho_solve((low, True), np.eye(k))
        upper: np.ndarray = scipy.linalg.cholesky((hinv + hinv.T) / 2, lower=False)
        return upper
    except np.linalg.LinAlgError:
        raise BadInputError(
            f"the Hessian is not positive definite after damping {damp}; raise damp (e.g. 0.1) or calibrate on more, more varied inputs"
        ) from None


def output_error(w: np.ndarray, wq: np.ndarray, hessian: np.ndarray, layout: Layout) -> float:
    """Layer output error on the calibration rows: sum over rows of (w - wq) H (w - wq)^T.

    With H = 2/n X^T X this is 2/n ||X W^T - X Wq^T||_F^2; ``gptq_weights`` reports its GPTQ/RTN ratio.

    Args:
        w: float weight; wq: its dequantized version (same shape).
        hessian: as for ``gptq_quantize``.
        layout: output and reduction axes of ``w``.

    Returns:
        The error, >= 0.
    """
    d2, _ = _to_2d(np.asarray(w, np.float64) - np.asarray(wq, np.float64), layout)
    h = _check_hessian(hessian, d2.shape)
    rows = d2.shape[0] // h.shape[0]
    return float(sum(np.sum((d2[g * rows : (g + 1) * rows] @ h[g]) * d2[g * rows : (g + 1) * rows]) for g in range(h.shape[0])))


# ----------------------------------------------------------------------------------------------
# Hessian capture with onnxruntime
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Capture:
    """Where a weight's inputs come from: its consumer nodes (all of one kind) and the expected layout."""

    name: str
    op: str
    index: int
    nodes: tuple[Any, ...]  # onnx NodeProto, one per use of the weight
    activations: tuple[str, ...]  # the tensor that multiplies the weight, per node
    shape: tuple[int, ...]
    layout: Layout
    groups: int


def layer_hessians(
    model_bytes: bytes,
    weights: Mapping[str, WeightSpec],
    feeds: Iterable[Mapping[str, np.ndarray]],
) -> tuple[dict[str, np.ndarray], dict[str, str]]:
    """H = 2/n X^T X of every MatMul/Gemm/Conv weight, from onnxruntime runs on calibration feeds.

    X's rows are every vector the weight multiplies: all batch, time and spatial positions (a Conv's
    input unfolded to patches honouring kernel, strides, pads/auto_pad, dilations; group g gives g
    Hessians [g, K, K]). A weight used by several nodes of one kind sums their rows.

    Args:
        model_bytes: the float ONNX model.
        weights: names to capture, each with (op_type, input index, attrs) as ``Model._consumer``
            records them; the graph itself is read for the consumers' attributes.
        feeds: calibration inputs, one dict of graph inputs per run.

    Returns:
        (Hessians by name in float64 ([K, K], or [g, K, K] for a grouped Conv; columns ordered as
        ``gptq_quantize`` views the weight), {name: reason} for weights that get none: biases,
        elementwise constants, Gather tables, batched MatMul weights; round those with RTN).

    Raises:
        BadInputError: a name that is no initializer of the model, a spec that disagrees with the
            graph, or feeds with no rows.
        BadModelError: onnxruntime cannot load or run the model, or an activation has an unexpected shape.
    """
    import onnx

    proto = onnx.load_from_string(model_bytes)
    caps, unsupported = _plan_captures(proto, weights)
    sess = _session(proto, caps, [])
    gram, rows = _accumulate(sess, caps, feeds, {})
    return {n: 2.0 * gram[n] / rows[n] for n in gram}, unsupported


def _plan_captures(proto: Any, weights: Mapping[str, WeightSpec]) -> tuple[dict[str, _Capture], dict[str, str]]:
    inits = {i.name: tuple(int(d) for d in i.dims) for i in proto.graph.initializer}
    uses: dict[str, list[tuple[Any, int]]] = {}
    for node in proto.graph.node:
        for j, name in enumerate(node.input):
            if name in weights:
                uses.setdefault(name, []).append((node, j))
    caps: dict[str, _Capture] = {}
    unsupported: dict[str, str] = {}
    for name, spec in weights.items():
        if name not in inits:
            raise BadInputError(f"weight '{name}' is no initializer of the model; was the spec made for another model?")
        shape = inits[name]
        found = uses.get(name, [])
        if not found:
            unsupported[name] = "no node of the main graph consumes it"
            continue
        op, j = found[0][0].op_type, found[0][1]
        if (spec[0], int(spec[1])) != (op, j) and spec[0] != "default":
            raise BadInputError(
                f"weight '{name}': the spec says {spec[0]} input {spec[1]}, the graph's first consumer is {op} input {j}; "
                "build the spec from this model (Model._consumer)"
            )
        kinds = {(n.op_type, jj, _attr(n, "transA", 0), _attr(n, "transB", 0), _attr(n, "group", 1)) for n, jj in found}
        if len(kinds) > 1:
            ops = sorted(k[0] for k in kinds)
            unsupported[name] = f"used by {len(found)} nodes of different kinds ({ops}); one Hessian needs one layout"
            continue
        node0 = found[0][0]
        reason, act_index, layout = _consumer_rule(op, j, len(shape), node0)
        if reason:
            unsupported[name] = reason
            continue
        groups = int(_attr(node0, "group", 1)) if op == "Conv" else 1
        if op == "Conv" and shape[0] % groups:
            raise BadModelError(f"Conv weight '{name}' has {shape[0]} output channels, not divisible by group={groups}")
        assert act_index is not None and layout is not None
        acts = tuple(n.input[act_index] for n, _ in found)
        caps[name] = _Capture(name, op, j, tuple(n for n, _ in found), acts, shape, layout, groups)
    return caps, unsupported


def _attr(node: Any, key: str, default: Any) -> Any:
    from onnx import helper

    for a in node.attribute:
        if a.name == key:
            v = helper.get_attribute_value(a)
            return v.decode() if isinstance(v, bytes) else v
    return default


def _consumer_rule(op: str, j: int, ndim: int, node: Any) -> tuple[str | None, int | None, Layout | None]:
    """(reason it has no Hessian, or None; which node input multiplies it; the weight's [out, in] layout)."""
    # the [out, in] layout comes from the one table every stage uses (`edgetqs.core.model.layout_of`)
    attrs = {k: _attr(node, k, 0) for k in ("transA", "transB")}
    if op == "MatMul" and j in (0, 1):
        if ndim != 2:
            return f"MatMul weight of rank {ndim}: a batched weight needs one Hessian per batch entry (not built)", None, None
        return None, 1 - j, layout_of(op, j, ndim, attrs)
    if (op == "Gemm" and j in (0, 1)) or (op == "Conv" and j == 1):
        return None, (1 - j if op == "Gemm" else 0), layout_of(op, j, ndim, attrs)
    if op in ("Gemm", "Conv") and j == 2:
        return f"the bias of {op}: it is added, not multiplied, so it has no Hessian", None, None
    return f"consumed by {op} (input {j}); GPTQ needs the weight of a MatMul, Gemm or Conv", None, None


def _session(proto: Any, caps: Mapping[str, _Capture], overridable: list[str]) -> Any:
    """An onnxruntime session with every capture's activation as an output, ``overridable`` weights as inputs."""
    import onnx
    import onnxruntime as ort
    from onnx import helper

    model = onnx.ModelProto()
    model.CopyFrom(proto)
    outputs = {o.name for o in model.graph.output}
    for act in dict.fromkeys(a for c in caps.values() for a in c.activations):
        if act not in outputs:
            vi = onnx.ValueInfoProto()
            vi.name = act  # no type: onnxruntime infers it
            model.graph.output.append(vi)
    inputs = {i.name for i in model.graph.input}
    by_name = {i.name: i for i in model.graph.initializer}
    for n in overridable:
        if n not in inputs:  # an initializer that is also a graph input is a default a feed may replace
            model.graph.input.append(helper.make_tensor_value_info(n, by_name[n].data_type, list(by_name[n].dims)))
    model.ir_version = max(model.ir_version, 4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # overridable initializers draw a warning per weight; they are on purpose here
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
        raise BadModelError(f"onnxruntime cannot load the model with its activations exposed: {str(exc).splitlines()[0]}") from None


def _accumulate(
    sess: Any,
    caps: Mapping[str, _Capture],
    feeds: Iterable[Mapping[str, np.ndarray]],
    overrides: Mapping[str, np.ndarray],
) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Sum of X^T X ([g, K, K], squeezed to [K, K] when g = 1) and the row count per capture."""
    acts = list(dict.fromkeys(a for c in caps.values() for a in c.activations))
    gram: dict[str, np.ndarray] = {}
    rows = {n: 0 for n in caps}
    for feed in feeds:
        try:
            got = dict(zip(acts, sess.run(acts, {**feed, **overrides}), strict=True)) if acts else {}
        except Exception as exc:  # noqa: BLE001 - onnxruntime raises its own exception types
            raise BadModelError(f"onnxruntime failed on a calibration feed: {str(exc).splitlines()[0]}") from None
        for name, cap in caps.items():
            for node, act in zip(cap.nodes, cap.activations, strict=True):
                for x in _rows(cap, node, got[act]):  # [g, r, K] chunks
                    xtx = np.matmul(x.transpose(0, 2, 1), x)
                    gram[name] = xtx if name not in gram else gram[name] + xtx
                    rows[name] += x.shape[1]
    for name in caps:
        if rows[name] == 0:
            raise BadInputError(f"no calibration rows reached weight '{name}'; give at least one feed")
    return {n: g[0] if g.shape[0] == 1 else g for n, g in gram.items()}, rows


def _rows(cap: _Capture, node: Any, act: np.ndarray) -> Iterable[np.ndarray]:
    """The rows that multiply the weight, as [g, rows, K] float64 chunks."""
    x = np.asarray(act, np.float64)
    if cap.op == "Conv":
        for i in range(x.shape[0]):  # one sample at a time bounds the unfolded patches' memory
            yield _conv_patches(x[i : i + 1], cap.shape, node, cap.groups)
        return
    lay = cap.layout
    assert lay.in_axis is not None
    k = cap.shape[lay.in_axis]
    if cap.op == "Gemm":
        # Y = A' B': weight B multiplies the rows of A' (A, or A^T with transA); weight A the columns of B' (B, or B^T)
        transposed = bool(_attr(node, "transA" if cap.index == 1 else "transB", 0))
        x = x.T if transposed == (cap.index == 1) else x
    elif cap.index == 0:  # MatMul W @ B: W multiplies B's columns
        x = x[None] if x.ndim == 1 else np.swapaxes(x, -1, -2)
    if x.shape[-1] != k:
        raise BadModelError(f"weight '{cap.name}' reduces over {k} but its {cap.op} input has shape {np.shape(act)}")
    yield x.reshape(1, -1, k)


def _conv_patches(x: np.ndarray, w_shape: tuple[int, ...], node: Any, groups: int) -> np.ndarray:
    """im2col: [g, N * out positions, C/g * prod(kernel)], columns ordered like W[o, c, *k].reshape(o, -1)."""
    ksh = tuple(w_shape[2:])
    nsp = len(ksh)
    if x.ndim != nsp + 2 or x.shape[1] != groups * w_shape[1]:
        raise BadModelError(f"Conv input of shape {x.shape} does not fit weight {w_shape} with group={groups}")
    strides = list(_attr(node, "strides", [1] * nsp))
    dil = list(_attr(node, "dilations", [1] * nsp))
    auto_pad = _attr(node, "auto_pad", "NOTSET")
    spatial = x.shape[2:]
    if auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        begin, end = [], []
        for i in range(nsp):
            out = -(-spatial[i] // strides[i])
            total = max(0, (out - 1) * strides[i] + (ksh[i] - 1) * dil[i] + 1 - spatial[i])
            small, big = total // 2, total - total // 2
            begin.append(small if auto_pad == "SAME_UPPER" else big)
            end.append(big if auto_pad == "SAME_UPPER" else small)
    elif auto_pad == "VALID":
        begin, end = [0] * nsp, [0] * nsp
    else:
        pads = list(_attr(node, "pads", [0] * (2 * nsp)))
        begin, end = pads[:nsp], pads[nsp:]
    xp = np.pad(x, [(0, 0), (0, 0)] + list(zip(begin, end, strict=True)))
    outs = [(spatial[i] + begin[i] + end[i] - dil[i] * (ksh[i] - 1) - 1) // strides[i] + 1 for i in range(nsp)]
    if min(outs, default=1) <= 0:
        raise BadModelError(f"Conv input {x.shape} is smaller than its dilated kernel {ksh}")
    n, c = x.shape[:2]
    npos = int(np.prod(ksh, dtype=np.int64))
    cols = np.empty((n, c, npos, *outs))
    for kidx, off in enumerate(np.ndindex(*ksh)):
        window = tuple(slice(off[i] * dil[i], off[i] * dil[i] + strides[i] * (outs[i] - 1) + 1, strides[i]) for i in range(nsp))
        cols[:, :, kidx] = xp[(slice(None), slice(None), *window)]
    flat = cols.reshape(n, c * npos, -1).transpose(0, 2, 1).reshape(-1, c * npos)  # rows: (sample, position)
    return flat.reshape(flat.shape[0], groups, -1).transpose(1, 0, 2)  # channel-major columns split into groups


# ----------------------------------------------------------------------------------------------
# Many weights at once
# ----------------------------------------------------------------------------------------------


def gptq_weights(
    model_bytes: bytes,
    weights_spec: Mapping[str, WeightSpec],
    precisions: Mapping[str, Precision],
    layouts: Mapping[str, Layout] | None,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    damp: float = 0.01,
    block: int = 128,
    act_order: bool = False,
    full_range: bool = False,
    sequential: bool = False,
) -> tuple[dict[str, QuantizedTensor], list[str]]:
    """GPTQ integers for every integer-planned weight; RTN for those GPTQ cannot serve.

    Args:
        model_bytes: the float ONNX model.
        weights_spec: (op_type, input index, attrs) per weight (``Model._consumer``).
        precisions: the plan; float precisions are left to the caller (noted), int16 is RTN (noted).
        layouts: per weight (``Model.layout``). A given layout must match the consumer's, since the
            Hessian's columns follow the consumer. None: GPTQ weights take the consumer's layout and
            RTN fallbacks Layout(0, None) (so blocked RTN becomes per channel): pass them for a plan.
        feeds: calibration inputs (one dict per run; read once, or once per wave when sequential).
        damp, block, act_order, full_range: as for ``gptq_quantize``.
        sequential: quantize in waves along the graph: each weight's Hessian is captured from the
            model whose upstream weights are already quantized (GPTQ's layer-by-layer mode).
            One-shot (False) captures every Hessian from the float model in one pass.

    Returns:
        (QuantizedTensor per integer-planned weight, notes: one line per weight saying GPTQ with its
        calibration rows and output-error ratio GPTQ/RTN on those rows, or RTN and why).

    Raises:
        BadInputError: a planned name that is no initializer or has no spec, a layout that
            disagrees with the consumer, no calibration rows, or a Hessian GPTQ cannot invert.
        BadModelError: onnxruntime cannot load or run the model.
    """
    import onnx
    from onnx import numpy_helper

    proto = onnx.load_from_string(model_bytes)
    arrays = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer if i.name in precisions}
    missing = [n for n in precisions if n not in arrays or n not in weights_spec]
    if missing:
        raise BadInputError(
            f"planned weight(s) {missing[:5]} are not initializers of the model or have no spec; was the plan made for this model?"
        )
    feeds = list(feeds)
    out: dict[str, QuantizedTensor] = {}
    notes: list[str] = []
    overrides: dict[str, np.ndarray] = {}  # quantize-dequantized values the sequential mode runs with
    candidates: dict[str, Precision] = {}
    for name, p in precisions.items():
        w = arrays[name]
        lay = (layouts or {}).get(name) or Layout(0, None)
        pe = effective(p, w.shape, lay)
        if pe.kind == "float" or pe.bits == 32:
            notes.append(f"{name}: {pe.name} is not an integer precision; left to the caller")
            if pe.kind == "float" and pe.bits == 16:
                overrides[name] = fake_quant(w, pe, lay)
        elif pe.bits not in GPTQ_BITS or w.ndim < 2:
            out[name] = quantize_int(w, pe, lay)
            notes.append(f"{name}: RTN {pe.name} ({'int16 is rounded to nearest' if pe.bits == 16 else 'no reduction axis'})")
        else:
            candidates[name] = p
    caps, unsupported = _plan_captures(proto, {n: weights_spec[n] for n in candidates})
    for name, reason in unsupported.items():
        lay = (layouts or {}).get(name) or Layout(0, None)
        out[name] = quantize_int(arrays[name], candidates[name], lay)
        notes.append(f"{name}: RTN {out[name].precision.name} ({reason})")
    for name, cap in caps.items():
        given = (layouts or {}).get(name)
        if given is not None and given != cap.layout:
            raise BadInputError(
                f"weight '{name}': layout {given} given, but its {cap.op} input {cap.index} reduces along {cap.layout}; "
                "pass Model.layout(name) or None"
            )
    for name, rtn in out.items():  # every RTN weight is in place from the first wave on
        overrides[name] = rtn.dequantize()
    if not caps:
        return {n: out[n] for n in precisions if n in out}, notes
    sess = _session(proto, caps, list(precisions) if sequential else [])
    order = _waves(proto, caps) if sequential else [list(caps)]
    for wave in order:
        # one-shot captures from the float model; sequential runs with what is quantized so far
        dtype_overrides = {n: v.astype(arrays[n].dtype) for n, v in overrides.items()} if sequential else {}
        gram, rows = _accumulate(sess, {n: caps[n] for n in wave}, feeds, dtype_overrides)
        for name in wave:
            cap, w = caps[name], arrays[name]
            h = 2.0 * gram[name] / rows[name]
            qt = gptq_quantize(w, h, candidates[name], cap.layout, damp=damp, block=block, act_order=act_order, full_range=full_range)
            rtn = quantize_int(w, candidates[name], cap.layout)
            e_g, e_r = output_error(w, qt.dequantize(), h, cap.layout), output_error(w, rtn.dequantize(), h, cap.layout)
            ratio = f"{e_g / e_r:.3f}" if e_r > 0 else "n/a (RTN exact)"
            notes.append(f"{name}: GPTQ {qt.precision.name} from {rows[name]} rows; output error on them GPTQ/RTN {ratio}")
            out[name] = qt
            if sequential:
                overrides[name] = qt.dequantize()
    if sequential and caps:
        notes.append(f"sequential GPTQ: {len(order)} wave(s) of onnxruntime runs over {len(feeds)} feed(s)")
    return {n: out[n] for n in precisions if n in out}, notes


def _waves(proto: Any, caps: Mapping[str, _Capture]) -> list[list[str]]:
    """Captures grouped so each one's activations depend only on weights of earlier waves.

    A weight's own float value may feed its activation (a weight shared by consecutive layers): that
    use is not waited for, or it would never be ready. Nodes inside subgraphs are not followed.
    """
    producer = {o: node for node in proto.graph.node for o in node.output}
    upstream: dict[str, set[str]] = {}
    for name, cap in caps.items():
        seen: set[str] = set()
        deps: set[str] = set()
        stack = list(cap.activations)
        while stack:
            t = stack.pop()
            if t in seen:
                continue
            seen.add(t)
            if t in caps and t != name:
                deps.add(t)
            node = producer.get(t)
            if node is not None:
                stack.extend(i for i in node.input if i)
        upstream[name] = deps
    pending = list(caps)
    waves: list[list[str]] = []
    while pending:
        ready = [n for n in pending if not upstream[n] & set(pending)]
        if not ready:
            raise BadModelError(f"weights {pending[:5]} depend on each other; the graph is not a DAG")
        waves.append(ready)
        pending = [n for n in pending if n not in ready]
    return waves
