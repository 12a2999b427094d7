"""Tiny ONNX forecasters built in code with seeded generators (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path, opset: int = OPSET) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _init(name: str, arr: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(arr), name)


def state_mlp(
    path: Path, n: int = 8, hidden: int = 16, seed: int = 0, batch: int | str = "B", dead_branch: bool = False, gain_branch: bool = False
) -> Path:
    """x[B,n] -> x + 0.3 * tanh(l2(tanh(l1(x)))), a stable residual state model.

    dead_branch: adds ``dead.weight`` whose contribution is multiplied by zero.
    gain_branch: multiplies the state by exp(1e6 * (gain.weight - 1)), gain.weight = 1: any
        perturbation of it overflows the rollout to Inf.
    """
    rng = np.random.default_rng(seed)
    w1 = (rng.standard_normal((hidden, n)) / np.sqrt(n)).astype(np.float32)
    b1 = (0.1 * rng.standard_normal(hidden)).astype(np.float32)
    w2 = (rng.standard_normal((n, hidden)) / np.sqrt(hidden)).astype(np.float32)
    b2 = (0.1 * rng.standard_normal(n)).astype(np.float32)
    inits = [
        _init("l1.weight", w1),
        _init("l1.bias", b1),
        _init("l2.weight", w2),
        _init("l2.bias", b2),
        _init("k", np.array(0.3, np.float32)),
    ]
    nodes = [
        helper.make_node("Gemm", ["x", "l1.weight", "l1.bias"], ["h"], transB=1),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("Gemm", ["a", "l2.weight", "l2.bias"], ["o"], transB=1),
        helper.make_node("Tanh", ["o"], ["t"]),
        helper.make_node("Mul", ["t", "k"], ["d"]),
    ]
    last = "x"
    if gain_branch:
        inits += [
            _init("gain.weight", np.ones(n, np.float32)),
            _init("one", np.array(1.0, np.float32)),
            _init("big", np.array(1e6, np.float32)),
        ]
        nodes += [
            helper.make_node("Sub", ["gain.weight", "one"], ["g0"]),
            helper.make_node("Mul", ["g0", "big"], ["g1"]),
            helper.make_node("Exp", ["g1"], ["g2"]),
            helper.make_node("Mul", ["x", "g2"], ["xg"]),
        ]
        last = "xg"
    nodes.append(helper.make_node("Add", [last, "d"], ["s"]))
    out = "s"
    if dead_branch:
        inits += [_init("dead.weight", rng.standard_normal((n, n)).astype(np.float32)), _init("zero", np.array(0.0, np.float32))]
        nodes += [
            helper.make_node("MatMul", ["x", "dead.weight"], ["dm"]),
            helper.make_node("Mul", ["dm", "zero"], ["dz"]),
            helper.make_node("Add", ["s", "dz"], ["s2"]),
        ]
        out = "s2"
    nodes.append(helper.make_node("Identity", [out], ["y"]))
    graph = helper.make_graph(
        nodes,
        "state_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, n])],
        inits,
    )
    return _save(graph, path)


def exploding(path: Path, n: int = 4, factor: float = 10.0) -> Path:
    """x_{t+1} = factor * (W x): the float rollout itself overflows after a few dozen steps."""
    w = (np.eye(n) * factor).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w.weight"], ["y"])],
        "exploding",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        [_init("w.weight", w)],
    )
    return _save(graph, path)


def window_mlp(
    path: Path, length: int = 6, horizon: int = 2, channels: int = 3, hidden: int = 12, seed: int = 0, quantiles: int = 0
) -> Path:
    """x[B,L,C] -> [B,H,C] (or [B,H,C,Q] with quantiles > 0): an MLP on the flattened window."""
    rng = np.random.default_rng(seed)
    fin, fout = length * channels, horizon * channels * max(quantiles, 1)
    w1 = (rng.standard_normal((fin, hidden)) / np.sqrt(fin)).astype(np.float32)
    w2 = (0.5 * rng.standard_normal((hidden, fout)) / np.sqrt(hidden)).astype(np.float32)
    inits = [
        _init("enc.weight", w1),
        _init("enc.bias", np.zeros(hidden, np.float32)),
        _init("dec.weight", w2),
        _init("dec.bias", np.zeros(fout, np.float32)),
        _init("flat", np.array([0, fin], np.int64)),
        _init("outshape", np.array([0, horizon, channels] + ([quantiles] if quantiles else []), np.int64)),
    ]
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["xf"]),
        helper.make_node("MatMul", ["xf", "enc.weight"], ["h0"]),
        helper.make_node("Add", ["h0", "enc.bias"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["h"]),
        helper.make_node("MatMul", ["h", "dec.weight"], ["o0"]),
        helper.make_node("Add", ["o0", "dec.bias"], ["o1"]),
        helper.make_node("Reshape", ["o1", "outshape"], ["y"]),
    ]
    oshape = ["B", horizon, channels] + ([quantiles] if quantiles else [])
    graph = helper.make_graph(
        nodes,
        "window_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", length, channels])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, oshape)],
        inits,
    )
    return _save(graph, path)


def static_conv(path: Path, channels: int = 2, size: int = 6, seed: int = 0) -> Path:
    """(x[B,C,H,W], mask[B,1,H,W]) -> x + 0.1*conv(concat(x, mask)): a state model with a static input."""
    rng = np.random.default_rng(seed)
    w = (0.3 * rng.standard_normal((channels, channels + 1, 3, 3))).astype(np.float32)
    inits = [_init("conv.weight", w), _init("conv.bias", np.zeros(channels, np.float32)), _init("k", np.array(0.1, np.float32))]
    nodes = [
        helper.make_node("Concat", ["x", "mask"], ["xm"], axis=1),
        helper.make_node("Conv", ["xm", "conv.weight", "conv.bias"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Tanh", ["c"], ["t"]),
        helper.make_node("Mul", ["t", "k"], ["d"]),
        helper.make_node("Add", ["x", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "static_conv",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", channels, size, size]),
            helper.make_tensor_value_info("mask", TensorProto.FLOAT, ["B", 1, size, size]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", channels, size, size])],
        inits,
    )
    return _save(graph, path)


def no_weights(path: Path, n: int = 4) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Tanh", ["x"], ["y"])],
        "no_weights",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
    )
    return _save(graph, path)


def deep_mlp(path: Path, n: int = 8, hidden: int = 24, layers: int = 5, seed: int = 0, act: str = "Tanh") -> Path:
    """x -> x + 0.3 * tanh(chain of `layers` Gemm+act): more groups, for planner tests.

    act: the hidden activation's ONNX op (``Gelu`` has no TFLite-Micro kernel)."""
    rng = np.random.default_rng(seed)
    inits, nodes, prev, width = [], [], "x", n
    for i in range(layers):
        out = n if i == layers - 1 else hidden
        inits += [
            _init(f"fc{i}.weight", (rng.standard_normal((out, width)) / np.sqrt(width)).astype(np.float32)),
            _init(f"fc{i}.bias", (0.1 * rng.standard_normal(out)).astype(np.float32)),
        ]
        nodes += [
            helper.make_node("Gemm", [prev, f"fc{i}.weight", f"fc{i}.bias"], [f"h{i}"], transB=1),
            helper.make_node("Tanh" if i == layers - 1 else act, [f"h{i}"], [f"a{i}"]),
        ]
        prev, width = f"a{i}", out
    inits.append(_init("k", np.array(0.3, np.float32)))
    nodes += [helper.make_node("Mul", [prev, "k"], ["d"]), helper.make_node("Add", ["x", "d"], ["y"])]
    graph = helper.make_graph(
        nodes,
        "deep_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        inits,
    )
    return _save(graph, path, opset=20 if act == "Gelu" else OPSET)  # Gelu is an opset-20 op


def matmul_mlp(path: Path, n: int = 8, hidden: int = 512, seed: int = 0) -> Path:
    """x -> x + 0.3 * tanh(tanh(x W1 + b1) W2 + b2) with MatMul + Add (as torch exports nn.Linear on 3-D inputs),
    weights [K, N]: W2's reduction size is ``hidden`` (MatMulNBits' size rule needs a wide K)."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("l1.weight", (rng.standard_normal((n, hidden)) / np.sqrt(n)).astype(np.float32)),
        _init("l1.bias", (0.1 * rng.standard_normal(hidden)).astype(np.float32)),
        _init("l2.weight", (rng.standard_normal((hidden, n)) / np.sqrt(hidden)).astype(np.float32)),
        _init("l2.bias", (0.1 * rng.standard_normal(n)).astype(np.float32)),
        _init("k", np.array(0.3, np.float32)),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "l1.weight"], ["m1"]),
        helper.make_node("Add", ["m1", "l1.bias"], ["h1"]),
        helper.make_node("Tanh", ["h1"], ["a1"]),
        helper.make_node("MatMul", ["a1", "l2.weight"], ["m2"]),
        helper.make_node("Add", ["m2", "l2.bias"], ["h2"]),
        helper.make_node("Tanh", ["h2"], ["t"]),
        helper.make_node("Mul", ["t", "k"], ["d"]),
        helper.make_node("Add", ["x", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "matmul_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        inits,
    )
    return _save(graph, path)


def fused_mlp(path: Path, n: int = 8, hidden: int = 16, seed: int = 0) -> Path:
    """x -> x + 0.3 * tanh(FusedMatMul(tanh(FusedMatMul(x, W1)), W2)): onnxruntime's fused contrib op
    (com.microsoft), as in a graph saved after onnxruntime's optimisations. onnx2tf has no converter for it."""
    rng = np.random.default_rng(seed)
    inits = [
        _init("l1.weight", (rng.standard_normal((n, hidden)) / np.sqrt(n)).astype(np.float32)),
        _init("l2.weight", (rng.standard_normal((hidden, n)) / np.sqrt(hidden)).astype(np.float32)),
        _init("k", np.array(0.3, np.float32)),
    ]
    nodes = [
        helper.make_node("FusedMatMul", ["x", "l1.weight"], ["h"], domain="com.microsoft", alpha=1.0),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("FusedMatMul", ["a", "l2.weight"], ["o"], domain="com.microsoft", alpha=1.0),
        helper.make_node("Tanh", ["o"], ["t"]),
        helper.make_node("Mul", ["t", "k"], ["d"]),
        helper.make_node("Add", ["x", "d"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fused_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", n])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.microsoft", 1)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def masked_window(
    path: Path, length: int = 8, horizon: int = 2, hidden: int = 12, seed: int = 0, batch: int | str = "B", bad: str = ""
) -> Path:
    """x[B,L,1] -> y[B,H,1]: a window model holding the constants a real export holds beside its weights.

    A causal average over the window (outer product + an [L,L] ``mask`` initializer with -inf above the
    diagonal + Softmax), then ``x + avg`` -> MatMul ``val_12`` (an exporter-made name; its node records the
    module scope ``enc.proj`` in ``pkg.torch.onnx.name_scopes``) -> Tanh -> MatMul ``dec.weight`` (node with a
    ``namespace`` only) -> + 0.01 * ``range_3`` (0, 1, ... H-1: an arange) + ``zeros_like_3`` (all zeros);
    the output shape comes from ``shape_f``, a float [0, H, 1] Cast to int64 (a shape constant).
    ``bad``: ``nan`` puts a NaN in ``dec.weight``, ``inf`` an infinity in ``val_12`` (broken weights)."""
    rng = np.random.default_rng(seed)
    L, H = length, horizon
    w_enc = (rng.standard_normal((L, hidden)) / np.sqrt(L)).astype(np.float32)
    w_dec = (0.5 * rng.standard_normal((hidden, H)) / np.sqrt(hidden)).astype(np.float32)
    if bad == "nan":
        w_dec[1, 0] = np.nan
    if bad == "inf":
        w_enc[0, 2] = np.inf
    inits = [
        _init("flat", np.array([0, L], np.int64)),
        _init("ax1", np.array([1], np.int64)),
        _init("ax2", np.array([2], np.int64)),
        _init("mask", np.triu(np.full((L, L), -np.inf, np.float32), k=1)),
        _init("val_12", w_enc),
        _init("dec.weight", w_dec),
        _init("range_3", np.arange(H, dtype=np.float32)),
        _init("zeros_like_3", np.zeros(H, np.float32)),
        _init("shape_f", np.array([0, H, 1], np.float32)),
        _init("k", np.array(0.01, np.float32)),
    ]
    enc = helper.make_node("MatMul", ["xa", "val_12"], ["h0"], name="node_MatMul_5")
    helper.set_metadata_props(enc, {"pkg.torch.onnx.name_scopes": "['', 'enc', 'enc.proj', 'linear_2']"})
    dec = helper.make_node("MatMul", ["h", "dec.weight"], ["o0"], name="node_MatMul_9")
    helper.set_metadata_props(dec, {"namespace": ": Root/dec: Linear/linear_3: aten.linear"})
    nodes = [
        helper.make_node("Reshape", ["x", "flat"], ["xf"]),
        helper.make_node("Unsqueeze", ["xf", "ax2"], ["xc"]),
        helper.make_node("Unsqueeze", ["xf", "ax1"], ["xr"]),
        helper.make_node("Mul", ["xc", "xr"], ["s0"]),
        helper.make_node("Add", ["s0", "mask"], ["s1"]),
        helper.make_node("Softmax", ["s1"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "xc"], ["av"]),
        helper.make_node("Reshape", ["av", "flat"], ["avf"]),
        helper.make_node("Add", ["xf", "avf"], ["xa"]),
        enc,
        helper.make_node("Tanh", ["h0"], ["h"]),
        dec,
        helper.make_node("Mul", ["range_3", "k"], ["r"]),
        helper.make_node("Add", ["o0", "r"], ["o1"]),
        helper.make_node("Add", ["o1", "zeros_like_3"], ["o2"]),
        helper.make_node("Cast", ["shape_f"], ["shape_i"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["o2", "shape_i"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "masked_window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, L, 1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, H, 1])],
        inits,
    )
    return _save(graph, path)


def forced_state(path: Path, a: float = 0.9, w: tuple[float, float] = (0.5, 0.2)) -> Path:
    """x[B,1], tod[B,2] -> a * x + tod @ [[w0], [w1]]: x_{t+1} = a x_t + w0 sin(2 pi hour_t / 24) + w1 cos(...)."""
    inits = [_init("a.weight", np.array([[a]], np.float32)), _init("w.weight", np.array([[w[0]], [w[1]]], np.float32))]
    nodes = [
        helper.make_node("MatMul", ["x", "a.weight"], ["ax"]),
        helper.make_node("MatMul", ["tod", "w.weight"], ["wf"]),
        helper.make_node("Add", ["ax", "wf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "forced_state",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 1]),
            helper.make_tensor_value_info("tod", TensorProto.FLOAT, ["B", 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1])],
        inits,
    )
    return _save(graph, path)


def forced_window(
    path: Path, length: int = 6, h: int = 3, rows: int | None = None, a: float = 0.9, w: tuple[float, float] = (0.5, 0.2)
) -> Path:
    """x[B,L,1], tod[B,R,2] -> y[B,H,1] = a * x[:, -1:] + tod[:, -H:] @ [[w0], [w1]]: each predicted step is the
    last observed one damped plus the time of day of the last H forcing rows (R = H: the predicted steps; R = L:
    the window's rows, whose last H are the window's last H hours)."""
    r = rows or h
    inits = [
        _init("a.weight", np.array([[a]], np.float32)),
        _init("w.weight", np.array([[w[0]], [w[1]]], np.float32)),
        _init("last_lo", np.array([length - 1], np.int64)),
        _init("last_hi", np.array([length], np.int64)),
        _init("f_lo", np.array([r - h], np.int64)),
        _init("f_hi", np.array([r], np.int64)),
        _init("axis1", np.array([1], np.int64)),
    ]
    nodes = [
        helper.make_node("Slice", ["x", "last_lo", "last_hi", "axis1"], ["last"]),
        helper.make_node("MatMul", ["last", "a.weight"], ["ax"]),
        helper.make_node("Slice", ["tod", "f_lo", "f_hi", "axis1"], ["fh"]),
        helper.make_node("MatMul", ["fh", "w.weight"], ["wf"]),
        helper.make_node("Add", ["ax", "wf"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "forced_window",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", length, 1]),
            helper.make_tensor_value_info("tod", TensorProto.FLOAT, ["B", r, 2]),
        ],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", h, 1])],
        inits,
    )
    return _save(graph, path)


def level_window(
    path: Path,
    length: int = 12,
    channels: int = 4,
    a: float = 0.5,
    b: float = 0.3,
    transposed: bool = False,
    gemm: bool = False,
    flatten: bool = False,
) -> Path:
    """x[B,L,C] -> y[B,1,C] = x_L + a (x_L - x_{L-1}) + b (x_{L-1} - x_{L-2}): a damped-momentum forecaster written as
    two dense layers on the flattened window (differences, then their mix). Its dynamics carry no level: fed variables
    that sit at different levels, a per-call quantizer of the flattened window spends its range on the levels.
    ``transposed``: the window is flattened variable-major ([B, C, L], as channel-independent models lay it out);
    ``gemm``: the first layer is a Gemm with its bias (weight [in, out], transB 0); ``flatten``: a Flatten, not a Reshape."""
    c = channels
    fin = length * c

    def at(t: int, v: int) -> int:
        return v * length + t if transposed else t * c + v

    w1 = np.zeros((fin, 2 * c), np.float32)  # features: x_L - x_{L-1}, x_{L-1} - x_{L-2} per variable
    for v in range(c):
        last, prev, prev2 = at(length - 1, v), at(length - 2, v), at(length - 3, v)
        w1[last, v], w1[prev, v] = 1.0, -1.0
        w1[prev, c + v], w1[prev2, c + v] = 1.0, -1.0
    w2 = np.zeros((2 * c, c), np.float32)
    for v in range(c):
        w2[v, v], w2[c + v, v] = a, b
    inits = [
        _init("diff.weight", w1),
        _init("diff.bias", np.zeros(2 * c, np.float32)),
        _init("mix.weight", w2),
        _init("flat", np.array([0, fin], np.int64)),
        _init("last_lo", np.array([length - 1], np.int64)),
        _init("last_hi", np.array([length], np.int64)),
        _init("axis1", np.array([1], np.int64)),
        _init("outshape", np.array([0, 1, c], np.int64)),
    ]
    nodes = [
        *([helper.make_node("Transpose", ["x"], ["xt"], perm=[0, 2, 1])] if transposed else []),
        helper.make_node("Flatten", ["xt" if transposed else "x"], ["xf"], axis=1)
        if flatten
        else helper.make_node("Reshape", ["xt" if transposed else "x", "flat"], ["xf"]),
        *(
            [helper.make_node("Gemm", ["xf", "diff.weight", "diff.bias"], ["d"], name="d0")]
            if gemm
            else [helper.make_node("MatMul", ["xf", "diff.weight"], ["d0"]), helper.make_node("Add", ["d0", "diff.bias"], ["d"])]
        ),
        helper.make_node("MatMul", ["d", "mix.weight"], ["m"]),
        helper.make_node("Reshape", ["m", "outshape"], ["delta"]),
        helper.make_node("Slice", ["x", "last_lo", "last_hi", "axis1"], ["last"]),
        helper.make_node("Add", ["last", "delta"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "level_window",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", length, c])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 1, c])],
        inits,
    )
    return _save(graph, path)
