"""GPTQ rounding: the OBS compensation, the gain over RTN, the Hessian capture, and the end-to-end effect."""

from __future__ import annotations

import itertools
from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetqs.allocation.gptq import _conv_patches, _obs_quantize, gptq_quantize, gptq_weights, layer_hessians, output_error
from edgetqs.core.model import load_model
from edgetqs.core.quantize import Layout, Precision, QuantizedTensor, parse_precision, quantize_int
from edgetqs.errors import BadInputError

ROWS = Layout(0, 1)  # [out, in]: Gemm(transB=1) / Conv


def _correlated(rng: np.random.Generator, n: int, k: int) -> np.ndarray:
    """Inputs whose features are strongly correlated (as activations of a trained layer are)."""
    return rng.standard_normal((n, k)) @ (np.eye(k) + 0.6 * rng.standard_normal((k, k))) + 0.05 * rng.standard_normal((n, k))


def _frob(x: np.ndarray, w: np.ndarray, q: QuantizedTensor) -> float:
    return float(np.linalg.norm(x @ w.T.astype(np.float64) - x @ q.dequantize().T.astype(np.float64)))


# ---------------------------------------------------------------------------------------- algorithm


@pytest.mark.parametrize("n_columns, block", [(1, 128), (5, 3)])
def test_compensation_is_the_least_squares_solution(n_columns: int, block: int) -> None:
    """After fixing the first m columns to their integers, the working weights of the others are
    argmin_w' ||X (w - [q_fixed, w'])||^2 (exact OBS, damp 0; m = 5 crosses lazy-batch boundaries)."""
    rng = np.random.default_rng(0)
    x = _correlated(rng, 300, 9)
    w = rng.standard_normal((4, 9))
    rtn = quantize_int(w, Precision("int", 3, "channel"), ROWS)
    s = np.repeat(rtn.scale.astype(np.float64)[:, None], 9, axis=1)
    q, work = _obs_quantize(w, s, 2 / 300 * x.T @ x, -3, 3, damp=0.0, block=block, act_order=False, n_columns=n_columns)
    fixed = q[:, :n_columns] * s[:, :n_columns]
    assert np.array_equal(q[:, 0], np.clip(np.round(w[:, 0] / s[:, 0]), -3, 3))  # the first column is plain RTN
    for r in range(4):
        target = x @ w[r] - x[:, :n_columns] @ fixed[r]
        best, *_ = np.linalg.lstsq(x[:, n_columns:], target, rcond=None)
        np.testing.assert_allclose(work[r, n_columns:], best, rtol=0, atol=1e-8 * np.abs(best).max())


@pytest.mark.parametrize("act_order", [False, True])
def test_lazy_batches_do_not_change_the_integers(act_order: bool) -> None:
    rng = np.random.default_rng(1)
    x = _correlated(rng, 400, 40)
    w = rng.standard_normal((16, 40)).astype(np.float32)
    h = 2 / 400 * x.T @ x
    p = Precision("int", 4, "block", 8)
    ref = gptq_quantize(w, h, p, ROWS, block=1, act_order=act_order).q
    for block in (7, 16, 128):
        assert np.array_equal(gptq_quantize(w, h, p, ROWS, block=block, act_order=act_order).q, ref)


@pytest.mark.parametrize("bits", [3, 4])
@pytest.mark.parametrize("gran", ["channel", "tensor", "block16"])
def test_gptq_output_error_below_rtn(bits: int, gran: str) -> None:
    rng = np.random.default_rng(2)
    x, held = _correlated(rng, 2000, 64), None
    held = x[1000:]
    x = x[:1000]
    w = rng.standard_normal((32, 64)).astype(np.float32)
    p = parse_precision(f"int{bits}-{gran}")
    h = 2 / len(x) * x.T @ x
    rtn, gq = quantize_int(w, p, ROWS), gptq_quantize(w, h, p, ROWS)
    e_rtn, e_gq = _frob(x, w, rtn), _frob(x, w, gq)
    print(
        f"int{bits}-{gran}: ||XW^T - XQ^T||_F RTN {e_rtn:.2f} GPTQ {e_gq:.2f} (x{e_gq / e_rtn:.3f}); "
        f"held-out RTN {_frob(held, w, rtn):.2f} GPTQ {_frob(held, w, gq):.2f}"
    )
    assert e_gq < 0.85 * e_rtn
    assert _frob(held, w, gq) < 0.9 * _frob(held, w, rtn)  # not an overfit to the calibration rows
    assert output_error(w, gq.dequantize(), h, ROWS) == pytest.approx(2 / len(x) * e_gq**2, rel=1e-9)


@pytest.mark.parametrize("bits", range(2, 9))
@pytest.mark.parametrize(
    "prec, layout, shape",
    [
        ("channel", Layout(0, 1), (12, 20)),
        ("tensor", Layout(1, 0), (20, 12)),  # MatMul [K, N]
        ("block8", Layout(1, 0), (20, 12)),
        ("block4", Layout(0, 1), (6, 5, 3, 3)),  # Conv [O, I, kh, kw]: blocks along I
        ("channel", Layout(0, 1), (6, 5, 3, 3)),
    ],
)
def test_integers_in_range_and_scales_are_rtns(bits: int, prec: str, layout: Layout, shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(bits)
    w = rng.standard_normal(shape).astype(np.float32)
    k = int(np.prod(shape)) // shape[layout.out_axis]
    x = _correlated(rng, 200, k)
    p = parse_precision(f"int{bits}-{prec}")
    rtn = quantize_int(w, p, layout)
    qmax = 2 ** (bits - 1) - 1
    for full in (False, True):
        g = gptq_quantize(w, 2 / 200 * x.T @ x, p, layout, full_range=full)
        assert g.q.shape == w.shape and g.q.dtype == np.int8
        assert g.q.min() >= (-qmax - 1 if full else -qmax) and g.q.max() <= qmax
        assert np.array_equal(g.scale, rtn.scale) and g.scale.dtype == rtn.scale.dtype
        assert (g.axis, g.block_size, g.precision) == (rtn.axis, rtn.block_size, rtn.precision)
    # uncorrelated inputs (H = c I): nothing to compensate, GPTQ is RTN whatever the layout
    assert np.array_equal(gptq_quantize(w, 3.0 * np.eye(k), p, layout).q, rtn.q)


def test_layouts_view_the_weight_as_out_by_reduction() -> None:
    """MatMul [K, N] is the transpose of Gemm(transB=1) [N, K]; a Conv [O, I, kh, kw] is [O, I*kh*kw]."""
    rng = np.random.default_rng(3)
    p = Precision("int", 3, "channel")
    w = rng.standard_normal((8, 30)).astype(np.float32)
    x = _correlated(rng, 300, 30)
    h = 2 / 300 * x.T @ x
    assert np.array_equal(gptq_quantize(w.T, h, p, Layout(1, 0)).q, gptq_quantize(w, h, p, ROWS).q.T)
    w4 = w.reshape(8, 30, 1, 1)
    x4 = _correlated(rng, 300, 30)
    h4 = 2 / 300 * x4.T @ x4
    conv = rng.standard_normal((8, 10, 3, 1)).astype(np.float32)
    assert np.array_equal(gptq_quantize(conv, h4, p, ROWS).q.reshape(8, 30), gptq_quantize(conv.reshape(8, 30), h4, p, ROWS).q)
    assert gptq_quantize(w4, h, p, ROWS).q.shape == (8, 30, 1, 1)


def _objective(w: np.ndarray, wq: np.ndarray, h: np.ndarray) -> float:
    d = np.asarray(w, np.float64) - wq
    return float(np.sum((d @ h) * d))


def _brute_force(w: np.ndarray, scale: np.ndarray, h: np.ndarray, levels: range) -> float:
    """Exact optimum over the integer grid: rows are independent problems d^T H d."""
    grid = np.array(list(itertools.product(levels, repeat=w.shape[1])), np.float64)
    total = 0.0
    for r in range(w.shape[0]):
        d = w[r] - grid * float(scale[r])
        total += float(np.min(np.einsum("nk,kl,nl->n", d, h, d)))
    return total


def _tiny(seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((64, 4)) @ (np.eye(4) + 0.8 * rng.standard_normal((4, 4)))
    return rng.standard_normal((2, 4)).astype(np.float32), 2 / 64 * x.T @ x


def test_tiny_layer_against_the_brute_force_optimum() -> None:
    """2 outputs x 4 inputs at 2 bits (levels -1, 0, 1): GPTQ is greedy, so it can miss the optimum and
    occasionally lose to RTN on so small a problem; on average it closes most of RTN's gap."""
    p = Precision("int", 2, "channel")
    gaps = []
    for seed in range(50):
        w, h = _tiny(seed)
        rtn, gq = quantize_int(w, p, ROWS), gptq_quantize(w, h, p, ROWS)
        best = _brute_force(w, rtn.scale, h, range(-1, 2))
        e_rtn, e_gq = _objective(w, rtn.dequantize(), h), _objective(w, gq.dequantize(), h)
        assert e_rtn >= best * (1 - 1e-9) and e_gq >= best * (1 - 1e-9)
        gaps.append((e_rtn / best, e_gq / best))
        if seed == 1:
            print(f"seed 1: RTN {e_rtn:.3f}, GPTQ {e_gq:.3f}, optimum {best:.3f}")
            assert e_gq < e_rtn
    g = np.array(gaps)
    wins = int(np.sum(g[:, 1] <= g[:, 0] * (1 + 1e-12)))
    print(
        f"50 seeds: GPTQ <= RTN on {wins}; mean error / optimum RTN {g[:, 0].mean():.3f} GPTQ {g[:, 1].mean():.3f}; "
        f"optimum reached RTN {np.mean(g[:, 0] < 1 + 1e-9):.2f} GPTQ {np.mean(g[:, 1] < 1 + 1e-9):.2f}"
    )
    assert wins >= 40
    assert g[:, 1].mean() < 0.8 * g[:, 0].mean()


def test_dead_inputs_keep_their_weights() -> None:
    """An input that was always 0 in calibration keeps its weights (rounded to nearest), as it may wake up in a rollout."""
    rng = np.random.default_rng(4)
    x = _correlated(rng, 200, 6)
    x[:, 2] = 0.0
    w = rng.standard_normal((5, 6)).astype(np.float32)
    w[:, 2] *= 0.2  # never a row's max: the scales are the same with or without it
    p = Precision("int", 3, "channel")
    g = gptq_quantize(w, 2 / 200 * x.T @ x, p, ROWS)
    assert np.array_equal(g.q[:, 2], quantize_int(w, p, ROWS).q[:, 2])
    live = np.delete(np.arange(6), 2)
    h_live = 2 / 200 * x[:, live].T @ x[:, live]
    assert np.array_equal(g.q[:, live], gptq_quantize(w[:, live], h_live, p, ROWS).q)  # the others as if it were absent


def test_grouped_hessian_is_one_problem_per_group() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((6, 2, 3, 3)).astype(np.float32)  # group 3: outputs 0-1, 2-3, 4-5
    hs = np.stack([2 / 100 * (x.T @ x) for x in (_correlated(rng, 100, 18) for _ in range(3))])
    p = Precision("int", 3, "channel")
    g = gptq_quantize(w, hs, p, ROWS)
    for i in range(3):
        assert np.array_equal(g.q[2 * i : 2 * i + 2], gptq_quantize(w[2 * i : 2 * i + 2], hs[i], p, ROWS).q)


def test_deterministic() -> None:
    rng = np.random.default_rng(6)
    x = _correlated(rng, 300, 48)
    w = rng.standard_normal((24, 48)).astype(np.float32)
    a = gptq_quantize(w, 2 / 300 * x.T @ x, Precision("int", 4, "block", 16), ROWS, act_order=True)
    b = gptq_quantize(w.copy(), 2 / 300 * x.T @ x, Precision("int", 4, "block", 16), ROWS, act_order=True)
    assert np.array_equal(a.q, b.q)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"precision": Precision("float", 16)}, "int2..int8"),
        ({"precision": Precision("int", 16, "channel")}, "int2..int8"),
        ({"layout": Layout(0, None)}, "no reduction axis"),
        ({"hessian": np.eye(5)}, "expected [6, 6]"),
        ({"hessian": -np.eye(6)}, "negative diagonal"),
        ({"hessian": np.full((6, 6), np.nan)}, "non-finite"),
        ({"damp": -0.1}, "damp"),
        ({"block": 0}, "block"),
        ({"hessian": np.ones((6, 6)), "damp": 0.0}, "raise damp"),  # rank 1 and no damping: no inverse
    ],
)
def test_bad_inputs_raise(kwargs: dict, words: str) -> None:
    args = {"w": np.ones((4, 6), np.float32), "hessian": np.eye(6), "precision": Precision("int", 4, "channel"), "layout": ROWS}
    args.update(kwargs)
    with pytest.raises(BadInputError, match=words.replace("[", r"\[").replace(".", r"\.")):
        gptq_quantize(args.pop("w"), args.pop("hessian"), args.pop("precision"), args.pop("layout"), **args)


# ------------------------------------------------------------------------------------ Hessian capture


def _model(nodes: list, inputs: list, outputs: list, inits: dict[str, np.ndarray]) -> bytes:
    graph = helper.make_graph(nodes, "t", inputs, outputs, [numpy_helper.from_array(v, k) for k, v in inits.items()])
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    return m.SerializeToString()


def _spec(data: bytes) -> dict:
    """(op_type, input index, attrs) of each initializer's first consumer, as Model._consumer records it."""
    m = onnx.load_from_string(data)
    names = {i.name for i in m.graph.initializer}
    out: dict = {}
    for node in m.graph.node:
        for j, n in enumerate(node.input):
            if n in names and n not in out:
                out[n] = (node.op_type, j, {})
    return out


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_matmul_hessian_over_batch_and_time_and_feeds() -> None:
    rng = np.random.default_rng(7)
    w = rng.standard_normal((5, 3)).astype(np.float32)
    data = _model(
        [helper.make_node("Tanh", ["x"], ["a"]), helper.make_node("MatMul", ["a", "w"], ["y"])],
        [_vi("x", ["B", "T", 5])],
        [_vi("y", ["B", "T", 3])],
        {"w": w},
    )
    feeds = [{"x": rng.standard_normal((2, 7, 5)).astype(np.float32)}, {"x": rng.standard_normal((3, 4, 5)).astype(np.float32)}]
    hs, unsupported = layer_hessians(data, _spec(data), feeds)
    xs = np.concatenate([np.tanh(f["x"].astype(np.float64)).reshape(-1, 5) for f in feeds])
    assert unsupported == {} and len(xs) == 2 * 7 + 3 * 4
    np.testing.assert_allclose(hs["w"], 2 / len(xs) * xs.T @ xs, rtol=1e-6, atol=1e-12)


@pytest.mark.parametrize("trans_a", [0, 1])
def test_gemm_transb_hessian(trans_a: int) -> None:
    rng = np.random.default_rng(8)
    w = rng.standard_normal((3, 6)).astype(np.float32)  # [N, K] with transB=1
    shape = [6, "B"] if trans_a else ["B", 6]
    gemm = helper.make_node("Gemm", ["a", "w", "b"], ["y"], transA=trans_a, transB=1, alpha=2.0)
    data = _model(
        [helper.make_node("Sigmoid", ["x"], ["a"]), gemm], [_vi("x", shape)], [_vi("y", ["B", 3])], {"w": w, "b": np.zeros(3, np.float32)}
    )
    x = rng.standard_normal((6, 11) if trans_a else (11, 6)).astype(np.float32)
    hs, unsupported = layer_hessians(data, _spec(data), [{"x": x}])
    a = 1 / (1 + np.exp(-x.astype(np.float64)))
    a = a.T if trans_a else a
    np.testing.assert_allclose(hs["w"], 2 / 11 * a.T @ a, rtol=1e-6, atol=1e-12)
    assert "bias" in unsupported["b"]


def _naive_patches(
    x: np.ndarray, kshape: tuple[int, int], stride: tuple[int, int], pads: tuple[int, int, int, int], dil: tuple[int, int], group: int
) -> np.ndarray:
    """[group, rows, C/g*kh*kw] by explicit loops over output positions (the test's own unfolding)."""
    xp = np.pad(x.astype(np.float64), [(0, 0), (0, 0), (pads[0], pads[2]), (pads[1], pads[3])])
    n, c, hp, wp = xp.shape
    kh, kw = kshape
    oh = (hp - dil[0] * (kh - 1) - 1) // stride[0] + 1
    ow = (wp - dil[1] * (kw - 1) - 1) // stride[1] + 1
    cg = c // group
    out = np.zeros((group, n * oh * ow, cg * kh * kw))
    for g in range(group):
        r = 0
        for b in range(n):
            for i in range(oh):
                for j in range(ow):
                    patch = [
                        xp[b, g * cg + ci, i * stride[0] + a * dil[0], j * stride[1] + e * dil[1]]
                        for ci in range(cg)
                        for a in range(kh)
                        for e in range(kw)
                    ]
                    out[g, r] = patch
                    r += 1
    return out


@pytest.mark.parametrize(
    "attrs, naive",
    [
        ({"pads": [1, 2, 1, 0], "strides": [2, 1]}, ((2, 1), (1, 2, 1, 0), (1, 1), 1)),
        ({"pads": [2, 2, 2, 2], "dilations": [2, 2], "group": 2}, ((1, 1), (2, 2, 2, 2), (2, 2), 2)),
        ({"auto_pad": "SAME_UPPER", "strides": [2, 2]}, ((2, 2), (0, 0, 1, 1), (1, 1), 1)),  # 6 -> 3: one pad row/col at the end
    ],
)
def test_conv_hessian(attrs: dict, naive: tuple) -> None:
    rng = np.random.default_rng(9)
    group = attrs.get("group", 1)
    c, o = 4, 6
    w = rng.standard_normal((o, c // group, 3, 2)).astype(np.float32)
    b = rng.standard_normal(o).astype(np.float32)
    data = _model(
        [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Conv", ["a", "w", "b"], ["y"], **attrs)],
        [_vi("x", ["B", c, 6, 6])],
        [_vi("y", ["B", o, "H", "W"])],
        {"w": w, "b": b},
    )
    x = rng.standard_normal((2, c, 6, 6)).astype(np.float32)
    hs, unsupported = layer_hessians(data, _spec(data), [{"x": x}])
    stride, pads, dil, _ = naive
    p = _naive_patches(np.maximum(x, 0), (3, 2), stride, pads, dil, group)
    want = np.stack([2 / p.shape[1] * pg.T @ pg for pg in p])
    np.testing.assert_allclose(hs["w"], want[0] if group == 1 else want, rtol=1e-6, atol=1e-12)
    assert set(unsupported) == {"b"}
    # the column order is the weight's: patches times W[o, c, kh, kw].reshape(o, -1) is the Conv itself
    node = onnx.load_from_string(data).graph.node[1]
    got = _conv_patches(np.maximum(x, 0).astype(np.float64), w.shape, node, group)
    y = ort.InferenceSession(data, providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    og = o // group
    for g in range(group):
        lin = got[g] @ w[g * og : (g + 1) * og].reshape(og, -1).T.astype(np.float64)
        ref = y[:, g * og : (g + 1) * og].transpose(0, 2, 3, 1).reshape(-1, og) - b[g * og : (g + 1) * og]
        np.testing.assert_allclose(lin, ref, rtol=1e-4, atol=1e-4)


def test_unsupported_weights_and_shared_weights() -> None:
    rng = np.random.default_rng(10)
    f = np.float32
    inits = {
        "w": rng.standard_normal((4, 4)).astype(f),
        "g": rng.standard_normal(4).astype(f),
        "table": rng.standard_normal((5, 4)).astype(f),
        "bw": rng.standard_normal((2, 4, 4)).astype(f),
        "idx": np.array([0, 3], np.int64),
    }
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"]),
        helper.make_node("Tanh", ["h"], ["a"]),
        helper.make_node("MatMul", ["a", "w"], ["h2"]),  # the same weight again, on other rows
        helper.make_node("Mul", ["h2", "g"], ["m"]),
        helper.make_node("Gather", ["table", "idx"], ["t"]),
        helper.make_node("Add", ["m", "t"], ["s"]),
        helper.make_node("MatMul", ["s", "bw"], ["y"]),
    ]
    data = _model(nodes, [_vi("x", [2, 4])], [_vi("y", [2, 2, 4])], inits)
    x = rng.standard_normal((2, 4)).astype(f)
    hs, unsupported = layer_hessians(data, _spec(data), [{"x": x}])
    a = np.tanh(x.astype(np.float64) @ inits["w"].astype(np.float64))
    both = np.concatenate([x.astype(np.float64), a])
    np.testing.assert_allclose(hs["w"], 2 / 4 * both.T @ both, rtol=1e-5, atol=1e-12)
    assert set(hs) == {"w"}
    assert "Mul" in unsupported["g"] and "Gather" in unsupported["table"] and "rank 3" in unsupported["bw"]


# ------------------------------------------------------------------------------------ whole models


def _one_step_error(path: Path, new: dict[str, np.ndarray], feed: dict[str, np.ndarray]) -> float:
    m = load_model(path)
    ref = ort.InferenceSession(m.bytes, providers=["CPUExecutionProvider"]).run(None, feed)[0]
    got = ort.InferenceSession(m.with_weights(new), providers=["CPUExecutionProvider"]).run(None, feed)[0]
    return float(np.linalg.norm(got - ref))


def _compare(path: Path, make_feed, precision: str) -> tuple[float, float, list[str]]:
    m = load_model(path)
    names = [w.name for w in m.weights if w.name.endswith(".weight")]
    precs = {n: parse_precision(precision) for n in names}
    rng = np.random.default_rng(11)
    qts, notes = gptq_weights(m.bytes, m._consumer, precs, {n: m.layout(n) for n in names}, [make_feed(rng, 64) for _ in range(4)])
    held = make_feed(np.random.default_rng(12), 256)
    rtn = {n: quantize_int(m.weight_array(n), precs[n], m.layout(n)).dequantize() for n in names}
    return _one_step_error(path, rtn, held), _one_step_error(path, {n: q.dequantize() for n, q in qts.items()}, held), notes


def test_deep_mlp_one_step_error_below_rtn(tmp_path: Path) -> None:
    path = models.deep_mlp(tmp_path / "deep.onnx")
    e_rtn, e_gq, notes = _compare(path, lambda r, n: {"x": r.standard_normal((n, 8)).astype(np.float32)}, "int3-channel")
    print(f"deep_mlp int3-channel held-out one-step ||dy||: RTN {e_rtn:.4f} GPTQ {e_gq:.4f} (x{e_gq / e_rtn:.3f})", *notes, sep="\n")
    assert e_gq < 0.85 * e_rtn
    assert len(notes) == 5 and all("GPTQ int3-channel from 256 rows" in n for n in notes)


def _smooth(rng: np.random.Generator, n: int, c: int, size: int) -> np.ndarray:
    """Spatially smooth fields (weather-like): separable blur of white noise."""
    z = rng.standard_normal((n, c, size + 4, size + 4))
    k = np.array([1, 2, 3, 2, 1.0]) / 5
    z = sum(k[i] * z[:, :, i : i + size, :] for i in range(5))
    return np.asarray(sum(k[i] * z[:, :, :, i : i + size] for i in range(5)), np.float32)


def test_static_conv_one_step_error_below_rtn(tmp_path: Path) -> None:
    path = models.static_conv(tmp_path / "conv.onnx", channels=4, size=8)

    def feed(r: np.random.Generator, n: int) -> dict[str, np.ndarray]:
        return {"x": _smooth(r, n, 4, 8), "mask": (r.random((n, 1, 8, 8)) > 0.5).astype(np.float32)}

    e_rtn, e_gq, notes = _compare(path, feed, "int3-channel")
    print(f"static_conv int3-channel held-out one-step ||dy||: RTN {e_rtn:.4f} GPTQ {e_gq:.4f} (x{e_gq / e_rtn:.3f})", *notes, sep="\n")
    assert e_gq < 0.85 * e_rtn


def test_sequential_recaptures_from_the_quantized_model(tmp_path: Path) -> None:
    m = load_model(models.deep_mlp(tmp_path / "deep.onnx", layers=3))
    names = ["fc0.weight", "fc1.weight", "fc2.weight"]
    p = parse_precision("int3-channel")
    precs = {**{n: p for n in names}, "fc0.bias": parse_precision("int2-tensor")}  # a bias: RTN, in place from the first wave
    lays = {n: m.layout(n) for n in precs}
    feeds = [{"x": np.random.default_rng(13).standard_normal((128, 8)).astype(np.float32)}]
    one, _ = gptq_weights(m.bytes, m._consumer, precs, lays, feeds)
    seq, notes = gptq_weights(m.bytes, m._consumer, precs, lays, feeds, sequential=True)
    assert np.array_equal(one["fc0.weight"].q, seq["fc0.weight"].q)  # nothing upstream of the first layer
    assert "3 wave(s)" in notes[-1]
    # fc1's integers are GPTQ on the Hessian of the model whose fc0 is already quantized
    partial = m.with_weights({n: seq[n].dequantize() for n in ("fc0.weight", "fc0.bias")})
    h1, _ = layer_hessians(partial, {"fc1.weight": m._consumer["fc1.weight"]}, feeds)
    assert np.array_equal(seq["fc1.weight"].q, gptq_quantize(m.weight_array("fc1.weight"), h1["fc1.weight"], p, lays["fc1.weight"]).q)
    assert not np.array_equal(seq["fc1.weight"].q, one["fc1.weight"].q)


@pytest.mark.parametrize("sequential", [False, True])
def test_fallbacks_and_notes(tmp_path: Path, sequential: bool) -> None:
    m = load_model(models.state_mlp(tmp_path / "s.onnx"))
    precs = {
        "l1.weight": parse_precision("int4-channel"),
        "l1.bias": parse_precision("int8-channel"),
        "l2.weight": parse_precision("int16-channel"),
        "l2.bias": parse_precision("fp16"),
    }
    lays = {n: m.layout(n) for n in precs}
    feeds = [{"x": np.random.default_rng(14).standard_normal((32, 8)).astype(np.float32)}]
    out, notes = gptq_weights(m.bytes, m._consumer, precs, lays, feeds, sequential=sequential)
    assert set(out) == {"l1.weight", "l1.bias", "l2.weight"}
    for n in ("l1.bias", "l2.weight"):  # RTN: a 1-D bias, and int16
        assert np.array_equal(out[n].q, quantize_int(m.weight_array(n), precs[n], lays[n]).q)
    text = "\n".join(notes)
    assert "l1.bias: RTN" in text and "l2.weight: RTN int16" in text and "l2.bias: fp16" in text and "l1.weight: GPTQ" in text
    with pytest.raises(BadInputError, match="reduces along"):
        gptq_weights(m.bytes, m._consumer, {"l1.weight": precs["l1.weight"]}, {"l1.weight": Layout(1, 0)}, feeds)
    with pytest.raises(BadInputError, match="calibration rows"):
        gptq_weights(m.bytes, m._consumer, {"l1.weight": precs["l1.weight"]}, None, [])
