"""Window centring (`edgetqs.runtimes.centring`): which dense layers read a flattened window, and the rewrite being an
identity of the model (and of the planned model, with its quantized weights summed into the level weight)."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from edgetqs.core.quantize import fake_quant, parse_precision
from edgetqs.examples import example_path
from edgetqs.runtimes.canonicalize import canonicalize
from edgetqs.runtimes.centring import centre, sites


def _batch1(path: Path) -> onnx.ModelProto:
    return canonicalize(onnx.load(path), 1)[0]


def _run(proto: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def _window(length: int, levels: np.ndarray, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (levels + np.cumsum(0.05 * rng.standard_normal((1, length, levels.size)), axis=1)).astype(np.float32)


def test_a_flattened_window_is_centred_exactly_on_either_layout(tmp_path: Path) -> None:
    """Steps-major and variable-major windows, a MatMul or a Gemm (weight [in, out]) after a Reshape or a Flatten."""
    levels = np.array([0.0, 80.0, -50.0, 150.0], np.float32)
    x = _window(12, levels)
    for transposed, gemm, flatten, axis in (
        (False, False, False, 1),
        (True, False, False, 2),
        (False, True, True, 1),
        (True, True, False, 2),
    ):
        path = models.level_window(tmp_path / f"m{transposed}{gemm}{flatten}.onnx", transposed=transposed, gemm=gemm, flatten=flatten)
        proto = _batch1(path)
        found = sites(proto, steps=12)
        assert [(s.weight, s.axis) for s in found] == [("diff.weight", axis)]
        out, done = centre(proto, found)
        assert [(c.weight, c.steps, c.variables, c.level_bytes) for c in done] == [("diff.weight", 12, 4, 4 * 8 * 4)]
        np.testing.assert_allclose(_run(out, x), _run(proto, x), atol=1e-4)
        # centred, the dense layer reads values near zero: the window minus its last step
        assert {"Slice", "Sub"} <= {n.op_type for n in out.graph.node}


def test_a_fixed_batch_is_centred_row_by_row(tmp_path: Path) -> None:
    """A model exported at a fixed batch of 3 (a batch the tflite route keeps): each row's window is centred on its own
    last step."""
    proto = canonicalize(onnx.load(models.level_window(tmp_path / "m.onnx")), 3)[0]
    found = sites(proto, steps=12)
    assert [(s.weight, s.batch) for s in found] == [("diff.weight", 3)]
    out, _ = centre(proto, found)
    x = np.concatenate([_window(12, np.array([0.0, 80.0, -50.0, 150.0], np.float32) * (i + 1), seed=i) for i in range(3)])
    np.testing.assert_allclose(_run(out, x), _run(proto, x), atol=1e-4)


def test_the_level_weight_comes_from_the_planned_weights(tmp_path: Path) -> None:
    """Given the values the plan computes with, the centred graph equals the float graph with those weights: the
    rewrite changes what a per-call quantizer sees, never what the plan simulated."""
    proto = _batch1(example_path("station") / "model.onnx")
    found = sites(proto, steps=24)
    assert [(s.weight, s.axis, s.trans_b, s.shape) for s in found] == [("l1.weight", 1, True, (24, 6))]
    w = numpy_helper.to_array(next(i for i in proto.graph.initializer if i.name == "l1.weight"))
    q = fake_quant(w, parse_precision("int4-tensor"))  # coarse, so that float and planned sums differ visibly
    planned = onnx.ModelProto()
    planned.CopyFrom(proto)
    for i in planned.graph.initializer:
        if i.name == "l1.weight":
            i.CopyFrom(numpy_helper.from_array(q, "l1.weight"))
    out, _ = centre(planned, found, {"l1.weight": q})
    x = (np.array([14.6, 8.0, 68.1, 986.6, 3.1, 1.7], np.float32) + _window(24, np.zeros(6, np.float32), 1) * 20).astype(np.float32)
    np.testing.assert_allclose(_run(out, x), _run(planned, x), rtol=1e-4, atol=1e-3)
    float_sum, _ = centre(planned, found)  # summed from the graph's own weights: the same here, since they are q
    np.testing.assert_allclose(_run(float_sum, x), _run(planned, x), rtol=1e-4, atol=1e-3)


def test_a_window_concatenated_with_covariates_is_centred_alone() -> None:
    """station-tod's first layer reads Concat(window flattened, time of day flattened): the window's columns are
    centred and their levels added back; the forcing's columns are read as they were."""
    proto = _batch1(example_path("station-tod") / "model.onnx")
    found = sites(proto, steps=24)
    assert [(s.weight, s.axis, s.offset, bool(s.concat)) for s in found] == [("l1.weight", 1, 0, True)]
    out, done = centre(proto, found)
    assert [c.level_bytes for c in done] == [6 * 128 * 4]
    assert sum(n.op_type == "Concat" for n in out.graph.node) == sum(n.op_type == "Concat" for n in proto.graph.node)
    rng = np.random.default_rng(0)
    x = (np.array([14.6, 8.0, 68.1, 986.6, 3.1, 1.7], np.float32) + 5 * rng.standard_normal((1, 24, 6))).astype(np.float32)
    tod = rng.standard_normal((1, 6, 2)).astype(np.float32)

    def run(p: onnx.ModelProto) -> np.ndarray:
        sess = ort.InferenceSession(p.SerializeToString(), providers=["CPUExecutionProvider"])
        return sess.run(None, {"x": x, "tod": tod})[0]

    np.testing.assert_allclose(run(out), run(proto), rtol=1e-4, atol=1e-3)


def test_no_site_without_a_window_of_several_variables(tmp_path: Path) -> None:
    # a state model, a univariate window, a window whose length is not the model's
    assert sites(_batch1(models.deep_mlp(tmp_path / "d.onnx")), steps=8) == []
    assert sites(_batch1(models.window_mlp(tmp_path / "u.onnx", length=6, channels=1)), steps=6) == []
    assert sites(_batch1(models.window_mlp(tmp_path / "w.onnx", length=6, channels=3)), steps=5) == []
    found = sites(_batch1(models.window_mlp(tmp_path / "w.onnx", length=6, channels=3)), steps=6)
    assert [(s.weight, s.axis) for s in found] == [("enc.weight", 1)]
    # only the layers asked for
    assert sites(_batch1(models.window_mlp(tmp_path / "w.onnx", length=6, channels=3)), steps=6, weights={"dec.weight"}) == []
