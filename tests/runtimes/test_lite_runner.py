"""`edgetqs.ondevice.runners.LiteRunner` with the real LiteRT interpreter (slow tier): a call of the graph's own rows
with float tensors in the ONNX layout is handed over as it is; anything else goes row by row."""

from __future__ import annotations

from pathlib import Path

import models
import numpy as np
import pytest

from edgetqs.core.model import load_model
from edgetqs.ondevice.runners import LiteRunner, OrtRunner
from edgetqs.runtimes.litert import float_tflite, io_dicts

pytestmark = [pytest.mark.slow, pytest.mark.tflite]


def test_one_row_calls_skip_the_row_loop_and_return_their_own_arrays(tmp_path: Path) -> None:
    """One invoke, no copies of ours, and the same numbers as the row-by-row path and as onnxruntime; an output is
    not overwritten by the next call, and a float64 or non-contiguous input is converted, not refused."""
    m = load_model(models.deep_mlp(tmp_path / "d.onnx"))
    ins, outs = io_dicts(m)
    lite = LiteRunner(str(float_tflite(m, tmp_path)), ins, outs)
    assert lite.plain and lite.rows == 1
    ort = OrtRunner(str(m.path))
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 8)).astype(np.float32)
    (one,) = lite.run(["y"], {"x": x[:1]})  # the direct path
    (many,) = lite.run(["y"], {"x": x})  # three rows, one invoke each
    (want,) = ort.run(["y"], {"x": x})
    assert one.shape == (1, 8) and one.dtype == np.float32
    np.testing.assert_allclose(one, many[:1], rtol=0, atol=0)
    np.testing.assert_allclose(many, want, rtol=1e-5, atol=1e-5)
    kept = one.copy()
    lite.run(["y"], {"x": x[1:2]})
    np.testing.assert_array_equal(one, kept)  # its own array: the next invoke did not write into it
    (f64,) = lite.run(["y"], {"x": x[:1].astype(np.float64)})
    (strided,) = lite.run(["y"], {"x": np.asfortranarray(np.repeat(x[:1], 2, axis=0))[:1]})
    np.testing.assert_allclose(f64, want[:1], rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(strided, want[:1], rtol=1e-5, atol=1e-5)
