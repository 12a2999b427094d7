"""Channel axes from the consuming op (`edgetqs.core.model.CHANNEL_AXES`): one test per entry, and the axis
reaching the ORT artifact's per-channel scales (issue 18: ONNX GRU/LSTM/RNN weights took axis 0, of size 1,
so "per-channel" int8 was one scale per tensor)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import realmodels

from edgetqs.core.model import CHANNEL_AXES, layout_of, load_model
from edgetqs.core.quantize import Layout, Precision, effective, quantize_int

# (op, slot, rank, attributes) -> (out axis, reduction axis)
ENTRIES = [
    ("Conv", 1, 4, {}, (0, 1)),  # W[M, C/group, kh, kw]
    ("Conv", 1, 3, {}, (0, 1)),  # 1-D conv W[M, C, k]
    ("ConvTranspose", 1, 4, {}, (1, 0)),  # W[C, M/group, kh, kw]
    ("Gemm", 1, 2, {"transB": 1}, (0, 1)),  # B[N, K]
    ("Gemm", 1, 2, {}, (1, 0)),  # B[K, N]
    ("Gemm", 0, 2, {}, (0, 1)),  # A[M, K]
    ("Gemm", 0, 2, {"transA": 1}, (1, 0)),  # A[K, M]
    ("MatMul", 1, 2, {}, (1, 0)),  # B[K, N]
    ("MatMul", 1, 3, {}, (2, 1)),  # batched B[G, K, N]
    ("MatMul", 0, 2, {}, (0, 1)),  # A[M, K]
    ("MatMul", 0, 3, {}, (1, 2)),  # batched A[G, M, K]
    ("Gather", 0, 2, {}, (0, 1)),  # embedding rows E[V, D]
    ("Gather", 0, 2, {"axis": 1}, (1, 0)),
    *[(op, 1, 3, {}, (1, 2)) for op in ("GRU", "LSTM", "RNN")],  # W[dirs, gates*hidden, input]
    *[(op, 2, 3, {}, (1, 2)) for op in ("GRU", "LSTM", "RNN")],  # R[dirs, gates*hidden, hidden]
    *[(op, 3, 2, {}, (1, None)) for op in ("GRU", "LSTM", "RNN")],  # B[dirs, 2*gates*hidden]
    ("LSTM", 7, 2, {}, (1, None)),  # peepholes P[dirs, 3*hidden]
]


def test_every_table_entry_has_a_case() -> None:
    assert {(op, slot) for op, slot, *_ in ENTRIES} == set(CHANNEL_AXES)


@pytest.mark.parametrize("op, slot, ndim, attrs, want", ENTRIES, ids=lambda v: str(v))
def test_channel_axis_by_op_and_slot(op: str, slot: int, ndim: int, attrs: dict, want: tuple[int, int | None]) -> None:
    got = layout_of(op, slot, ndim, attrs)
    assert (got.out_axis, got.in_axis) == want
    # per-channel scales run along that axis: one scale per output channel
    shape = tuple(3 + i for i in range(ndim))
    w = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    q = quantize_int(w, Precision("int", 8, "channel"), got)
    assert q.axis == want[0] and q.scale.size == shape[want[0]]


def test_other_ops_and_vectors_scale_along_axis_0() -> None:
    assert layout_of("Mul", 1, 2) == Layout(0, None) and layout_of("Conv", 2, 1) == Layout(0, None)


@pytest.mark.slow
def test_recurrent_weights_get_one_scale_per_gate_row_in_the_ort_artifact(tmp_path: Path) -> None:
    from edgetqs.allocation.plan import PlanOptions, make_plan, parse_pin
    from edgetqs.allocation.targets import find_target
    from edgetqs.core.inputs import resolve
    from edgetqs.runtimes.convert import convert
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    path = realmodels.gru_onestep(tmp_path / "gru.onnx", L=8, C=3, hidden=6)
    m = load_model(path)
    rnn = {w.name: w for w in m.weights if m.op_type(w.name) == "GRU"}
    assert len(rnn) == 3
    for name in rnn:
        lay = m.layout(name)
        assert lay.out_axis == 1 and m.weight_array(name).shape[1] in (18, 36)  # 3 gates x 6, bias 2 x 3 x 6
    inp = resolve(path, None, spinup=True, k=2)
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=3))
    pins = tuple(parse_pin(f"{n}=int8-channel") for n in rnn)
    plan = make_plan(s, inp.model, find_target("raspberrypi"), PlanOptions(runtime="ort", ratio=1.0, pins=pins))
    r = convert(inp.model, plan, "ort", tmp_path / "out", inp.contexts, inp.spec, horizon=3)
    g = onnx.load(str(tmp_path / "out" / r.artifact)).graph
    inits = {i.name: i for i in g.initializer}
    deq = {n.output[0]: n for n in g.node if n.op_type == "DequantizeLinear"}
    for name in rnn:
        eff = effective(Precision("int", 8, "channel"), m.weight_array(name).shape, m.layout(name))
        node = deq[name]
        scale = onnx.numpy_helper.to_array(inits[node.input[1]])
        if eff.granularity == "channel":  # W and R: one scale per gate row
            assert {a.name: a.i for a in node.attribute}.get("axis") == 1 and scale.size == m.weight_array(name).shape[1]
        else:  # B [1, 2*3*hidden]: one element per row, so per tensor (a scale per weight would outweigh it)
            assert scale.size == 1
