from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnxruntime as ort
import pytest

from edgetqs.core.model import load_model
from edgetqs.core.rollout import Rollout, SpecHints, infer_spec, parse_slice
from edgetqs.errors import RolloutSpecError


def _manual(path: Path, x0: np.ndarray, steps: int, feeds=None) -> np.ndarray:
    s = ort.InferenceSession(str(path))
    out, x = [], x0
    for _ in range(steps):
        x = s.run(None, {"x": x, **(feeds or {})})[0]
        out.append(x)
    return np.stack(out)


def test_state_mode_is_inferred_and_matches_a_hand_rollout(state_model: Path) -> None:
    m = load_model(state_model)
    spec = infer_spec(m)
    assert spec.mode == "state" and spec.pairs == (("x", "y"),) and spec.channel_axis == 1
    x0 = np.random.default_rng(0).standard_normal((5, 8)).astype(np.float32)
    res = Rollout(m, spec).run([x0], 7)
    assert res.forward_calls == 7 and res.first_nonfinite is None
    assert np.array_equal(res.steps[0], _manual(state_model, x0, 7))


def test_fixed_batch_model_rolls_out_each_context(tmp_path: Path) -> None:
    fixed = models.state_mlp(tmp_path / "b1.onnx", batch=1)
    dyn = models.state_mlp(tmp_path / "bd.onnx")
    x0 = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    a = Rollout(load_model(fixed), infer_spec(load_model(fixed))).run([x0], 4)
    b = Rollout(load_model(dyn), infer_spec(load_model(dyn))).run([x0], 4)
    assert a.forward_calls == 12 and b.forward_calls == 4  # batched when the batch axis is free
    assert np.allclose(a.steps[0], b.steps[0], atol=1e-6)


def test_window_mode_appends_predictions_and_drops_the_oldest(tmp_path: Path) -> None:
    p = models.window_mlp(tmp_path / "w.onnx", length=6, horizon=2, channels=3)
    m = load_model(p)
    spec = infer_spec(m)
    assert spec.mode == "window" and spec.channel_axis == -1
    x0 = np.random.default_rng(0).standard_normal((2, 6, 3)).astype(np.float32)
    res = Rollout(m, spec).run([x0], 3)
    s = ort.InferenceSession(str(p))
    x = x0
    for t in range(3):
        y = s.run(None, {"x": x})[0]
        assert np.array_equal(res.steps[0][t], y)
        x = np.concatenate([x[:, 2:], y], axis=1)


def test_increment_adds_the_output_to_the_state(state_model: Path) -> None:
    m = load_model(state_model)
    spec = infer_spec(m, SpecHints(increment=True))
    x0 = np.random.default_rng(0).standard_normal((2, 8)).astype(np.float32)
    res = Rollout(m, spec).run([x0], 2)
    s = ort.InferenceSession(str(state_model))
    x1 = x0 + s.run(None, {"x": x0})[0]
    assert np.allclose(res.steps[0][0], x1) and np.allclose(res.steps[0][1], x1 + s.run(None, {"x": x1})[0])


def test_output_slice_takes_the_median_quantile(tmp_path: Path) -> None:
    p = models.window_mlp(tmp_path / "q.onnx", quantiles=3)
    m = load_model(p)
    with pytest.raises(RolloutSpecError, match="neither have the same shape"):
        infer_spec(m)
    spec = infer_spec(m, SpecHints(output_slice="...,1"))
    assert spec.mode == "window"
    x0 = np.zeros((1, 6, 3), np.float32)
    res = Rollout(m, spec).run([x0], 1)
    full = ort.InferenceSession(str(p)).run(None, {"x": x0})[0]
    assert np.array_equal(res.steps[0][0], full[..., 1])


def test_static_input_must_be_declared_and_is_held_fixed(tmp_path: Path) -> None:
    p = models.static_conv(tmp_path / "s.onnx")
    m = load_model(p)
    with pytest.raises(RolloutSpecError) as err:
        infer_spec(m)
    msg = str(err.value)
    assert "x[?, 2, 6, 6]" in msg and "mask[?, 1, 6, 6]" in msg and "--static" in msg
    spec = infer_spec(m, SpecHints(static=("mask",)))
    assert spec.pairs == (("x", "y"),) and spec.static == ("mask",) and spec.channel_axis == 1
    with pytest.raises(RolloutSpecError, match="need values"):
        Rollout(m, spec)
    mask = np.ones((1, 6, 6), np.float32)
    x0 = np.random.default_rng(0).standard_normal((2, 2, 6, 6)).astype(np.float32)
    res = Rollout(m, spec, {"mask": mask}).run([x0], 3)
    # overridable conv weights cannot be pre-packed, so onnxruntime may take another kernel: close, not equal
    assert np.allclose(res.steps[0], _manual(p, x0, 3, {"mask": np.ones((2, 1, 6, 6), np.float32)}), atol=1e-5)


def test_declared_pair_must_name_model_tensors(state_model: Path) -> None:
    with pytest.raises(RolloutSpecError, match="does not name an input and an output"):
        infer_spec(load_model(state_model), SpecHints(pairs=(("x", "nope"),)))


def test_parse_slice() -> None:
    assert parse_slice("...,1") == (Ellipsis, 1)
    assert parse_slice("[:, 0:3, -1]") == (slice(None), slice(0, 3), -1)
    with pytest.raises(RolloutSpecError):
        parse_slice("__import__('os')")
