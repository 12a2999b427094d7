from __future__ import annotations

import itertools

import numpy as np
import pytest

from edgetqs.core.quantize import FP16, FP32, Layout, Precision, fake_quant, n_scales, packed_bytes, parse_precision, residual_rms
from edgetqs.errors import BadInputError
from edgetqs.runtimes import RUNTIMES


@pytest.mark.parametrize(
    "text, name",
    [
        ("fp32", "fp32"),
        ("FP16", "fp16"),
        ("int8", "int8-channel"),
        ("int4-block32", "int4-block32"),
        ("int2-tensor", "int2-tensor"),
        ("int32", "int32"),
    ],
)
def test_parse_precision_round_trips(text: str, name: str) -> None:
    assert parse_precision(text).name == name
    assert parse_precision(name) == parse_precision(text)


@pytest.mark.parametrize("bad", ["int9", "int1", "fp8", "int4-block", "int4-block1", "int4-row"])
def test_bad_precisions(bad: str) -> None:
    with pytest.raises(BadInputError):
        parse_precision(bad)


def test_rtn_grid_and_per_channel_scales() -> None:
    w = np.array([[1.0, -0.5, 0.25, 0.0], [10.0, 3.0, -7.0, 1.0]], np.float32)
    q = fake_quant(w, parse_precision("int4-channel"), Layout(0, 1))
    # per output channel (row): scale = max|w| / 7, values on that grid
    for row, qrow in zip(w, q):
        s = np.abs(row).max() / 7
        assert np.allclose(qrow / s, np.round(qrow / s), atol=1e-5)
        assert np.abs(qrow - row).max() <= s / 2 + 1e-6
    assert q[0, 0] == pytest.approx(1.0) and q[1, 0] == pytest.approx(10.0)  # the max is exact


def test_blocks_run_along_the_reduction_axis() -> None:
    rng = np.random.default_rng(0)
    w = rng.standard_normal((3, 64)).astype(np.float32)
    w[:, 32:] *= 100  # second block per row much larger: blocked keeps the first block precise
    blocked = residual_rms(w[:, :32], Precision("int", 4, "block", 32), Layout(0, 1))
    whole = fake_quant(w, Precision("int", 4, "block", 32), Layout(0, 1))
    chan = fake_quant(w, Precision("int", 4, "channel"), Layout(0, 1))
    assert np.abs(whole[:, :32] - w[:, :32]).max() < np.abs(chan[:, :32] - w[:, :32]).max() / 10
    assert blocked > 0
    # MatMul layout [K, N]: blocks along K (axis 0) for every output column
    assert n_scales((64, 3), Precision("int", 4, "block", 32), Layout(1, 0)) == 6


def test_packed_bytes_count_weights_and_scales() -> None:
    shape, lay = (16, 64), Layout(0, 1)
    assert packed_bytes(shape, FP32, lay) == 16 * 64 * 4
    assert packed_bytes(shape, FP16, lay) == 16 * 64 * 2
    assert packed_bytes(shape, parse_precision("int8-channel"), lay) == 16 * 64 + 16 * 4
    assert packed_bytes(shape, parse_precision("int4-tensor"), lay) == 16 * 64 // 2 + 4
    assert packed_bytes(shape, parse_precision("int4-block32"), lay) == 16 * 64 // 2 + 16 * 2 * 4
    assert (
        packed_bytes(shape, parse_precision("int8-channel"), lay, RUNTIMES.get("tflite").storage) == 16 * 64 + 16 * 12
    )  # + int64 zero points
    assert packed_bytes((7,), parse_precision("int4-tensor")) == 4 + 4  # 7 nibbles round up to 4 bytes
    # a 1-D tensor asked per channel is stored per tensor (one scale per element would outweigh it)
    assert packed_bytes((48,), parse_precision("int8-channel")) == 48 + 4


def test_fp16_residual_and_more_bits_less_error() -> None:
    w = np.random.default_rng(1).standard_normal((32, 32)).astype(np.float32)
    r = [residual_rms(w, parse_precision(f"int{b}-channel"), Layout(0, 1)) for b in range(2, 9)]
    assert all(a > b for a, b in itertools.pairwise(r))
    assert 0 < residual_rms(w, FP16) < r[-1] and residual_rms(w, FP32) == 0.0
