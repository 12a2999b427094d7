from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import onnxruntime as ort
import pytest

from edgetqs.core.model import load_model
from edgetqs.errors import BadInputError, BadModelError


def test_discovers_float_weights_and_skips_scalars(state_model: Path) -> None:
    m = load_model(state_model)
    assert [w.name for w in m.weights] == ["l1.weight", "l1.bias", "l2.weight", "l2.bias"]  # 'k' is a rank-0 constant
    assert m.n_params == 16 * 8 + 16 + 8 * 16 + 8
    assert [i.name for i in m.inputs] == ["x"] and m.inputs[0].shape == (None, 8)


def test_overridable_model_gives_the_same_output_and_accepts_overrides(state_model: Path) -> None:
    m = load_model(state_model)
    s0 = ort.InferenceSession(m.bytes)
    s1 = ort.InferenceSession(m.overridable_bytes())
    x = np.random.default_rng(1).standard_normal((3, 8)).astype(np.float32)
    assert np.array_equal(s0.run(None, {"x": x})[0], s1.run(None, {"x": x})[0])
    zero = {"l2.weight": np.zeros((8, 16), np.float32), "l2.bias": np.zeros(8, np.float32)}
    # with the second layer zeroed the residual adds 0.3*tanh(0) = 0: the output is the input
    assert np.allclose(s1.run(None, {"x": x, **zero})[0], x)


@pytest.mark.parametrize(
    "make, error, words",
    [
        (lambda p: p / "missing.onnx", BadInputError, "does not exist"),
        (lambda p: (p / "junk.onnx").write_bytes(b"\x00garbage\xff" * 10) and p / "junk.onnx", BadModelError, "not a readable ONNX"),
        (lambda p: models.no_weights(p / "nw.onnx"), BadModelError, "no float weight"),
        (lambda p: p, BadInputError, "is a folder, not a regular file"),
    ],
)
def test_bad_model_files_raise_clear_errors(tmp_path: Path, make, error, words) -> None:
    with pytest.raises(error, match=words):
        load_model(make(tmp_path))


def test_text_file_is_not_an_onnx_model(tmp_path: Path) -> None:
    p = tmp_path / "notes.onnx"
    p.write_text("this is a text file, not a model\n")
    with pytest.raises(BadModelError):
        load_model(p)
