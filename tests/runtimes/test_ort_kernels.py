"""Integer kernels in ONNX Runtime artifacts (issue 14): weight-only int8/int4 through MatMulNBits with
accuracy_level 4 where the target's size rule says so, and static int8 activations whose Gemms are rewritten to
MatMul so that onnxruntime fuses QLinearMatMul. Real onnxruntime, tiny seeded models."""

from __future__ import annotations

import json
import math
from pathlib import Path

import chain
import models
import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from edgetqs.allocation.plan import PlanOptions, make_plan, parse_pin
from edgetqs.allocation.targets import find_target
from edgetqs.core.quantize import Layout, parse_precision, quantize_int
from edgetqs.ondevice.runners import OrtRunner
from edgetqs.runtimes import readback
from edgetqs.runtimes.convert import convert
from edgetqs.runtimes.ort import NBITS_MIN_K, nbits_block
from edgetqs.runtimes.ort_mobile import to_ort_format
from edgetqs.runtimes.ort_static import fused_kernels

X86 = find_target("x86-64")
PI = find_target("raspberrypi")
# accuracy_level 4 quantizes each block of activations to int8 at run time: the artifact departs from the float
# model with the same (dequantized) weights by ~1/254 of a block's largest activation per product term; measured
# 1e-3 of the output scale on these models, asserted below at 1e-2
ACC4_TOL = 1e-2


def _nodes(path: Path) -> list[onnx.NodeProto]:
    return list(onnx.load(str(path)).graph.node)


def _dequantized_model(model_path: Path, plan, layout) -> bytes:
    """The float model with every integer-planned weight replaced by its dequantized round-to-nearest integers."""
    m = onnx.load(str(model_path))
    for init in m.graph.initializer:
        t = next((t for t in plan.tensors if t.name == init.name), None)
        if t is not None and t.precision.kind == "int" and not t.precision.stays_float:
            w = numpy_helper.to_array(init)
            init.CopyFrom(
                numpy_helper.from_array(quantize_int(w, t.precision, layout(init.name)).dequantize().astype(np.float32), init.name)
            )
    return m.SerializeToString()


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.abs(a - b).max() / np.abs(b).max())


@pytest.mark.parametrize("builder", ["matmul_mlp", "deep_mlp"])
def test_int8_and_int4_weights_run_matmulnbits_acc4_read_back_and_match_the_dequantized_model(tmp_path: Path, builder: str) -> None:
    """x86-64 (K >= 512): a per-channel int8 weight with K = 512 is one MatMulNBits block per row, an int4-block32 weight
    MatMulNBits 4-bit; both accuracy_level 4, the plan's integers exactly, the plan's bytes exactly; a K = 8 weight
    keeps DequantizeLinear (the size rule), the reason in convert.json; the .ort file of the artifact loads and runs."""
    if builder == "matmul_mlp":
        path, big8, big4, small = models.matmul_mlp(tmp_path / "m.onnx", hidden=512), "l2.weight", None, "l1.weight"
        pins = (f"{big8}=int8-channel", f"{small}=int8-channel")
    else:
        path, big8, big4, small = models.deep_mlp(tmp_path / "m.onnx", hidden=512, layers=3), "fc1.weight", "fc2.weight", "fc0.weight"
        pins = (f"{big8}=int8-channel", f"{big4}=int4-block32", f"{small}=int8-channel")
    c = chain.scored(path, k=3, rows=40)
    plan = make_plan(c.scores, c.model, X86, PlanOptions(ratio=1.0, pins=tuple(parse_pin(p) for p in pins)))
    r = convert(c.model, plan, "ort", tmp_path / "out", c.contexts, c.spec)
    art = tmp_path / "out" / r.artifact
    nb = {n.input[1]: {a.name: a.i for a in n.attribute} for n in _nodes(art) if n.op_type == "MatMulNBits"}
    assert {a["bits"] for a in nb.values()} == ({8, 4} if big4 else {8}) and {a["accuracy_level"] for a in nb.values()} == {4}
    assert r.all_match and r.weight_bytes == plan.weight_bytes  # read-back: the plan's integers, the plan's bytes
    found = {t.name: t.found for t in r.tensors}
    assert found[big8] == "int8-block512" and found[small] == "int8-channel"
    if big4:
        assert found[big4] == "int4-block32"
    saved = json.loads((tmp_path / "out" / "convert.json").read_text())["facts"]["weight_kernels"]
    assert saved[big8].startswith("MatMulNBits bits=8 block_size=512 accuracy_level=4")
    assert saved[small].startswith("DequantizeLinear") and "K=8 < 512" in saved[small]
    # the integers in the file, unpacked by the read-back, equal round-to-nearest's ([N, K] in MatMulNBits)
    g = readback.view(art)
    nbits = {big8: next(k for k in nb if k.startswith(big8))}
    stored = readback.stored_integers(g, big8, nbits)
    want = quantize_int(c.model.weight_array(big8), parse_precision("int8-channel"), c.model.layout(big8)).q
    assert stored is not None and np.array_equal(stored, want.T if builder == "matmul_mlp" else want)
    # outputs against the float model with the dequantized weights, on inputs the model sees
    x = {"x": np.random.default_rng(1).standard_normal((16, 8)).astype(np.float32)}
    ref = OrtRunner(_dequantized_model(path, plan, c.model.layout), threads=1).run(["y"], x)[0]
    got = OrtRunner(str(art), threads=1).run(["y"], x)[0]
    assert 0 < _max_rel(got, ref) < ACC4_TOL
    assert r.artifact_vs_simulated is not None and r.artifact_vs_simulated < ACC4_TOL
    # ORT-mobile: the same graph as a .ort flatbuffer loads, runs the same numbers and reads back the same integers
    ort_path = to_ort_format(art, tmp_path / "mobile")
    mobile = OrtRunner(ort_path.read_bytes(), ort_format=True, threads=1).run(["y"], x)[0]
    assert _max_rel(mobile, ref) < ACC4_TOL  # not bit-equal to the .onnx: the .ort is written unoptimised (fusions differ)
    assert np.array_equal(readback.stored_integers(readback.view(ort_path), big8, nbits), stored)


def test_size_rule_keeps_small_layers_and_the_pi_on_dequantize_linear(tmp_path: Path) -> None:
    """The rule is per target arch and per tensor: the raspberrypi target (aarch64: MatMulNBits measured slower than
    float on the emulated Cortex-A72 at every K) never uses it; the reason is recorded per tensor."""
    c = chain.scored(models.deep_mlp(tmp_path / "m.onnx", hidden=512, layers=3), k=3, rows=40)
    pins = tuple(parse_pin(p) for p in ("fc1.weight=int8-channel", "fc0.weight=int8-channel"))
    plan = make_plan(c.scores, c.model, PI, PlanOptions(ratio=1.0, pins=pins))
    r = convert(c.model, plan, "ort", tmp_path / "out", c.contexts, c.spec)
    assert not any(n.op_type == "MatMulNBits" for n in _nodes(tmp_path / "out" / r.artifact))
    assert "not measured faster" in r.facts["weight_kernels"]["fc1.weight"] and r.all_match
    assert NBITS_MIN_K["aarch64"] is None and NBITS_MIN_K["x86_64"] == 512


@pytest.mark.parametrize(
    ("precision", "k", "block", "why"),
    [
        ("int8-channel", 512, 512, "one block spanning K"),
        ("int8-channel", 576, 0, "not a power of two"),
        ("int8-block32", 576, 32, "K=576 >= 512"),
        ("int8-block64", 544, 0, "padding the plan did not price"),
        ("int4-block32", 1024, 32, "K=1024"),
        ("int8-tensor", 512, 0, "per tensor"),
        ("int8-channel", 256, 0, "K=256 < 512"),
    ],
)
def test_nbits_block_maps_only_layouts_stored_in_the_planned_bytes(precision: str, k: int, block: int, why: str) -> None:
    from onnx import helper

    gemm = helper.make_node("Gemm", ["x", "w", "b"], ["y"], transB=1)
    got, reason = nbits_block([(gemm, 1)], np.zeros((4, k), np.float32), parse_precision(precision), Layout(0, 1), 512)
    assert got == block and why in reason
    shared = nbits_block([(gemm, 1), (gemm, 1)], np.zeros((4, k), np.float32), parse_precision(precision), Layout(0, 1), 512)
    assert shared[0] == 0 and "one MatMul/Gemm" in shared[1]


def test_static_int8_rewrites_gemm_to_matmul_and_runs_qlinearmatmul(tmp_path: Path) -> None:
    """--activations int8 on a Gemm model: every int8 Gemm becomes MatMul + Add, onnxruntime's own optimised graph
    runs QLinearMatMul for each (before: 'no integer kernel'), the transposed weights read back as the plan's
    integers, and with every weight int8 the plan's price is the artifact's bytes."""
    c = chain.scored(models.deep_mlp(tmp_path / "m.onnx", hidden=32, layers=3), k=3, rows=40)
    plan = make_plan(c.scores, c.model, PI, PlanOptions(ratio=1.0, pins=(parse_pin("re:weight$=int8-channel"),), activations="int8"))
    r = convert(c.model, plan, "ort", tmp_path / "out", c.contexts, c.spec, activation_goal=math.inf)  # every activation int8
    st = r.facts["ort_static"]
    assert sorted(st["transposed_weights"]) == ["fc0.weight", "fc1.weight", "fc2.weight"] and len(st["gemm_as_matmul"]) == 3
    data = (tmp_path / "out" / r.artifact).read_bytes()
    ops = fused_kernels(data)
    assert ops.get("QLinearMatMul", 0) == 3 and "Gemm" not in ops and st["optimized_graph_ops"] == ops
    assert r.all_match and r.weight_bytes == plan.weight_bytes
    assert {t.found for t in r.tensors if t.name.endswith("weight")} == {"int8-channel"}
    assert r.error_by_lead[-1] < 0.5  # uint8 activations: coarser than the weights alone, still a forecast


def test_static_int8_keep_float_leaves_the_named_op_float(tmp_path: Path) -> None:
    """`static_qdq(keep_float=...)` (scripts/act_sensitivity.py measures each layer with it): the named op keeps float
    activations and a float kernel, the others still fuse; rows are any inputs of the float model."""
    from edgetqs.core.model import load_model
    from edgetqs.runtimes.ort import qdq_model
    from edgetqs.runtimes.ort_static import static_qdq

    m = load_model(models.deep_mlp(tmp_path / "m.onnx", hidden=32, layers=3))
    c = chain.scored(m.path, k=2, rows=20)
    plan = make_plan(c.scores, m, PI, PlanOptions(ratio=1.0, pins=(parse_pin("re:weight$=int8-channel"),), activations="int8"))
    data, _, _ = qdq_model(m, plan)
    rows = [{"x": np.random.default_rng(i).standard_normal((1, 8)).astype(np.float32)} for i in range(8)]
    _, every = static_qdq(data, m.proto, rows)
    first = every["quantized_nodes"][0]
    out, facts = static_qdq(data, m.proto, rows, keep_float={first})
    assert first not in facts["quantized_nodes"] and len(facts["quantized_nodes"]) == len(every["quantized_nodes"]) - 1 == 2
    ops = fused_kernels(out)
    # the kept op stays a float Gemm: as a MatMul onnxruntime 1.32 would itself fuse DQ -> MatMul into MatMulNBits,
    # the slow kernel on a Cortex-A72 (docs/notes/issue-14-speed.md)
    assert ops.get("QLinearMatMul", 0) == 2 and sum(ops.get(k, 0) for k in ("Gemm", "FusedGemm")) == 1 and "MatMulNBits" not in ops
    assert first in facts["float_nodes"] and first not in facts["gemm_as_matmul"]
    # its weight is Cast(int8) * scale, folded into a float weight when the session loads (no DequantizeLinear per
    # call), and reads back as the plan's integers
    assert "Cast" not in ops and ops.get("Mul", 0) == sum(n.op_type == "Mul" for n in m.proto.graph.node)
    g = readback.view_onnx(out)
    w = next(n.input[1] for n in m.proto.graph.node if (n.name or n.output[0]) == first)
    assert readback.stored_precision(g, w)[0] == "int8-channel"
    want = quantize_int(m.weight_array(w), parse_precision("int8-channel"), m.layout(w)).q
    assert np.array_equal(readback.stored_integers(g, w), want)


def test_weight_only_files_are_dequantized_once_at_load(tmp_path: Path) -> None:
    """A weight-only artifact says `fold_weights` (convert.json, the device job): loaded with session.disable_quant_qdq=1,
    onnxruntime folds every weight's DequantizeLinear into a float initializer (none is left in the graph it runs), with
    the same outputs; an artifact with integer activations does not fold (it would lose its QLinear kernels)."""
    import onnxruntime as ort

    from edgetqs.ondevice.runners import FOLD_WEIGHTS, RUNNERS
    from edgetqs.runtimes import RUNTIMES
    from edgetqs.runtimes.ort import fold_weights

    c = chain.scored(models.deep_mlp(tmp_path / "m.onnx", hidden=32, layers=3), k=3, rows=40)
    plan = make_plan(c.scores, c.model, PI, PlanOptions(ratio=1.0, pins=(parse_pin("re:weight$=int8-channel"),)))
    r = convert(c.model, plan, "ort", tmp_path / "wo", c.contexts, c.spec)
    path = tmp_path / "wo" / r.artifact
    assert r.facts["fold_weights"] is True and fold_weights(path) and any("disable_quant_qdq" in n for n in r.notes)
    job = RUNTIMES.get("ort").job(path, {}, r.facts)
    assert job["fold_weights"] is True

    def optimised(fold: bool) -> dict[str, int]:
        opts = ort.SessionOptions()
        opts.optimized_model_filepath = str(tmp_path / f"opt{int(fold)}.onnx")
        if fold:
            opts.add_session_config_entry(*FOLD_WEIGHTS)
        ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        ops: dict[str, int] = {}
        for n in onnx.load(str(tmp_path / f"opt{int(fold)}.onnx")).graph.node:
            ops[n.op_type] = ops.get(n.op_type, 0) + 1
        return ops

    assert optimised(False).get("DequantizeLinear", 0) == 3 and "DequantizeLinear" not in optimised(True)
    x = np.random.default_rng(1).standard_normal((1, 8)).astype(np.float32)
    folded = RUNNERS["onnxruntime"](job, str(path), 1).run(["y"], {"x": x})[0]
    plain = OrtRunner(str(path), threads=1).run(["y"], {"x": x})[0]
    assert np.allclose(folded, plain, atol=1e-5)
    p8 = make_plan(c.scores, c.model, PI, PlanOptions(ratio=1.0, pins=(parse_pin("re:weight$=int8-channel"),), activations="int8"))
    r8 = convert(c.model, p8, "ort", tmp_path / "i8", c.contexts, c.spec, activation_goal=math.inf)
    assert "fold_weights" not in r8.facts and not fold_weights(tmp_path / "i8" / r8.artifact)
    assert RUNTIMES.get("ort").job(tmp_path / "i8" / r8.artifact, {}, r8.facts)["fold_weights"] is False
