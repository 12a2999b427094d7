"""Tracing the plan's integers to TFLite's stored elements (edgetqs.runtimes.tflite_integers), without TensorFlow."""

from __future__ import annotations

import numpy as np
import pytest

from edgetqs.runtimes.base import ConvertError
from edgetqs.runtimes.readback import unpack4
from edgetqs.runtimes.tflite_integers import _by_transpose, _by_value, _pack4


def test_a_transposed_layout_is_found_even_where_values_repeat() -> None:
    src = np.array([[[0.0, 1.0], [0.0, 2.0], [3.0, 0.0]]], np.float32)  # [O=1, I=3, k=2]: zeros repeat
    stored = np.transpose(src, (0, 2, 1))  # [O, k, I] as onnx2tf lays a Conv1d out
    assert _by_transpose(src, stored.ravel(), stored.shape) == (0, 2, 1)
    assert _by_transpose(src, np.zeros(6, np.float32), (1, 2, 3)) is None


def test_by_value_maps_pieces_and_refuses_repeats_with_different_integers() -> None:
    src = np.array([0.5, -0.25, 1.0, 0.75], np.float32)
    q = np.array([64, -32, 127, 95], np.int16)
    s = np.full(4, 1.0 / 127, np.float32)
    got_q, got_s = _by_value("w", src, np.array([1.0, 0.5], np.float32), q, s)  # a piece, reordered
    assert got_q.tolist() == [127, 64] and np.allclose(got_s, 1.0 / 127)
    with pytest.raises(ConvertError, match="does not"):
        _by_value("w", src, np.array([0.3], np.float32), q, s)
    zeros = np.array([0.0, 0.0, 1.0], np.float32)  # two zero weights GPTQ moved to different integers
    with pytest.raises(ConvertError, match="repeated weight values carry different GPTQ integers"):
        _by_value("w", zeros, zeros[::-1].copy(), np.array([1, -1, 127], np.int16), np.full(3, 1.0 / 127, np.float32))
    same = _by_value("w", zeros, zeros[::-1].copy(), np.array([0, 0, 127], np.int16), np.full(3, 1.0 / 127, np.float32))
    assert same[0].tolist() == [127, 0, 0]


@pytest.mark.parametrize("n", [1, 6, 7])
def test_int4_packing_is_read_back_as_written(n: int) -> None:
    q = np.arange(-8, 8, dtype=np.int16)[:n]
    packed = _pack4(q)
    assert packed.size == (n + 1) // 2
    assert unpack4(packed.tobytes(), n, signed=True).tolist() == q.tolist()
