"""Window models as they come (issue 18): one-step [B, L, C] -> [B, C] and univariate [B, L] -> [B, H] are
detected without flags and roll out in the closed loop; stacks of windows in .npy are read as windows; the
contexts are spread over the record or stack (evenly, or seeded random within --span) and the rows used are
recorded."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgetqs.core.contexts import read_record, select_contexts
from edgetqs.core.model import load_model
from edgetqs.core.rollout import Rollout, SpecHints, infer_spec
from edgetqs.errors import RolloutSpecError


def _save(path: Path, nodes: list, x: list, y: list, inits: list) -> Path:
    g = helper.make_graph(
        nodes,
        path.stem,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        [numpy_helper.from_array(np.asarray(a), n) for n, a in inits],
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    onnx.save(m, str(path))
    return path


def onestep(path: Path, L: int = 5, C: int = 3, Q: int = 0) -> Path:
    """x[B, L, C] -> y[B, C] = mean over the window @ W (W = 0.9 I), or y[B, C, Q] with Q copies."""
    nodes = [
        helper.make_node("ReduceMean", ["x"], ["m"], axes=[1], keepdims=0),
        helper.make_node("MatMul", ["m", "w.weight"], ["y0" if Q else "y"]),
    ]
    inits = [("w.weight", (0.9 * np.eye(C)).astype(np.float32))]
    if Q:
        nodes += [helper.make_node("Unsqueeze", ["y0", "last"], ["y1"]), helper.make_node("Tile", ["y1", "reps"], ["y"])]
        inits += [("last", np.array([2], np.int64)), ("reps", np.array([1, 1, Q], np.int64))]
    return _save(path, nodes, ["B", L, C], ["B", C] + ([Q] if Q else []), inits)


def univariate(path: Path, L: int = 6, H: int = 2) -> Path:
    """x[B, L] -> y[B, H] = x @ W: W repeats 0.5 * (the last value + the mean of the window) H times."""
    w = np.full((L, H), 0.5 / L, np.float32)
    w[-1] += 0.5
    return _save(path, [helper.make_node("MatMul", ["x", "w.weight"], ["y"])], ["B", L], ["B", H], [("w.weight", w)])


def test_one_step_and_univariate_models_are_detected_without_flags(tmp_path: Path) -> None:
    s1 = infer_spec(load_model(onestep(tmp_path / "o.onnx")))
    assert (s1.mode, s1.window_form, s1.pairs) == ("window", "one-step", (("x", "y"),))
    s2 = infer_spec(load_model(univariate(tmp_path / "u.onnx")))
    assert (s2.mode, s2.window_form) == ("window", "univariate")
    # --mode window as its help says (one-step and univariate are window models); --mode state is refused with advice
    assert infer_spec(load_model(tmp_path / "o.onnx"), SpecHints(mode="window")).window_form == "one-step"
    with pytest.raises(RolloutSpecError) as e:
        infer_spec(load_model(tmp_path / "o.onnx"), SpecHints(mode="state"))
    assert e.value.hint is not None and e.value.hint.args == ("--mode", "window")


def test_output_slice_forms_of_its_help(tmp_path: Path) -> None:
    """'...,1' picks a quantile; ':,None' adds an axis (the user's old workaround: [B, C] -> [B, 1, C])."""
    q = load_model(onestep(tmp_path / "q.onnx", Q=4))  # [B, L, C] -> [B, C, 4]
    with pytest.raises(RolloutSpecError) as e:
        infer_spec(q)
    assert e.value.hint is not None and e.value.hint.key == "rollout-output-slice"
    spec = infer_spec(q, SpecHints(output_slice="...,1"))
    assert (spec.mode, spec.window_form) == ("window", "one-step")
    m = load_model(onestep(tmp_path / "o.onnx"))
    spec = infer_spec(m, SpecHints(output_slice=":,None"))
    assert (spec.mode, spec.window_form) == ("window", "steps")  # [B, 1, C]: H = 1
    win = np.random.default_rng(0).standard_normal((2, 5, 3)).astype(np.float32)
    a = np.asarray(Rollout(m, spec).run([win], 4).steps[0]).reshape(4, 2, 3)
    b = np.asarray(Rollout(m, infer_spec(m)).run([win], 4).steps[0]).reshape(4, 2, 3)
    assert np.allclose(a, b)  # the same closed loop either way


def _simulate_onestep(win: np.ndarray, T: int) -> np.ndarray:
    out = []
    for _ in range(T):
        y = 0.9 * win.mean(axis=1)  # [K, C]
        out.append(y)
        win = np.concatenate([win[:, 1:], y[:, None]], axis=1)
    return np.stack(out)


def test_closed_loop_feeds_back_a_one_step_prediction(tmp_path: Path) -> None:
    m = load_model(onestep(tmp_path / "o.onnx"))
    spec = infer_spec(m)
    win = np.random.default_rng(0).standard_normal((4, 5, 3)).astype(np.float32)
    res = Rollout(m, spec).run([win], 7)
    got = np.asarray(res.steps[0]).reshape(7, 4, 3)  # one predicted step per call
    assert np.allclose(got, _simulate_onestep(win.astype(np.float64), 7), atol=1e-5)


def test_closed_loop_feeds_back_a_univariate_prediction(tmp_path: Path) -> None:
    m = load_model(univariate(tmp_path / "u.onnx", L=6, H=2))
    spec = infer_spec(m)
    x0 = np.random.default_rng(1).standard_normal((3, 6)).astype(np.float32)
    x = x0.astype(np.float64)
    want = []
    for _ in range(4):
        y = np.repeat((0.5 * x[:, -1] + 0.5 * x.mean(axis=1))[:, None], 2, axis=1)
        want.append(y)
        x = np.concatenate([x[:, 2:], y], axis=1)
    res = Rollout(m, spec).run([x0[..., None]], 4)  # the loop holds a univariate window as [K, L, 1]
    got = np.asarray(res.steps[0])
    assert got.size == 4 * 3 * 2  # H = 2 values per call, for K = 3 contexts, 4 calls
    assert np.allclose(got.reshape(4, 3, 2), np.stack(want), atol=1e-5)


def test_stack_of_windows_in_npy_is_read_as_windows_and_spread(tmp_path: Path) -> None:
    m = load_model(onestep(tmp_path / "o.onnx", L=5, C=3))
    spec = infer_spec(m)
    stack = np.random.default_rng(0).standard_normal((96, 5, 3)).astype(np.float32)
    np.save(tmp_path / "w.npy", stack)
    ctx = select_contexts(read_record(tmp_path / "w.npy", spec), m, spec, 8)
    assert ctx.windows == tuple(int(r) for r in np.round(np.linspace(0, 95, 8)))  # spread over all 96, not the first 8
    assert np.array_equal(ctx.arrays[0], stack[list(ctx.windows)])
    assert "read as 96 windows of the model's window [5, 3]" in ctx.note and "evenly spaced" in ctx.note
    info = ctx.info()
    assert info.windows == ctx.windows and info.start_indices == (-1,) * 8 and info.pick == "even"
    # seeded random within a span: reproducible, distinct, inside the span, and recorded
    r1 = select_contexts(read_record(tmp_path / "w.npy", spec), m, spec, 8, span=(0.5, 1.0), pick="random", seed=3)
    r2 = select_contexts(read_record(tmp_path / "w.npy", spec), m, spec, 8, span=(0.5, 1.0), pick="random", seed=3)
    r3 = select_contexts(read_record(tmp_path / "w.npy", spec), m, spec, 8, span=(0.5, 1.0), pick="random", seed=4)
    assert r1.windows == r2.windows != r3.windows
    assert len(set(r1.windows)) == 8 and all(48 <= r < 96 for r in r1.windows) and list(r1.windows) == sorted(r1.windows)
    assert r1.info().pick == "random" and r1.info().seed == 3 and r1.info().span == (0.5, 1.0)


def test_univariate_windows_n_by_l_and_a_record_are_told_apart(tmp_path: Path) -> None:
    m = load_model(univariate(tmp_path / "u.onnx", L=6, H=2))
    spec = infer_spec(m)
    stack = np.random.default_rng(0).standard_normal((40, 6)).astype(np.float32)  # [N, L]: windows
    np.save(tmp_path / "w.npy", stack)
    ctx = select_contexts(read_record(tmp_path / "w.npy", spec), m, spec, 4)
    assert ctx.arrays[0].shape == (4, 6, 1) and np.array_equal(ctx.arrays[0][..., 0], stack[list(ctx.windows)])
    assert "read as 40 windows of the model's window [6] (a time-first record would be [N])" in ctx.note
    rec = np.random.default_rng(0).standard_normal(100).astype(np.float32)  # [N]: a record, windows drawn from it
    np.save(tmp_path / "r.npy", rec)
    ctx = select_contexts(read_record(tmp_path / "r.npy", spec), m, spec, 4)
    assert ctx.windows == () and ctx.indices == (0, 31, 63, 94)
    assert np.array_equal(ctx.arrays[0][1, :, 0], rec[31:37])
