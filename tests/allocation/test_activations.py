"""Integer activations chosen per op (`edgetqs.allocation.activations`) and the kernels that run them
(`edgetqs.runtimes.ort_static`): TQS of activation groups, the ladder int8 -> dynamic -> float measured in context,
DynamicQuantizeMatMul read back as planned, and the exact host form that ARM's kernels compute. Real onnxruntime,
tiny seeded models."""

from __future__ import annotations

import math
import subprocess
from pathlib import Path

import chain
import models
import numpy as np
import pytest

from edgetqs import api
from edgetqs.allocation.activations import _smallest_prefix, activation_groups, choose_activations
from edgetqs.allocation.plan import PlanOptions, make_plan, parse_pin
from edgetqs.allocation.targets import find_target
from edgetqs.core.quantize import parse_precision, quantize_int
from edgetqs.errors import BadInputError
from edgetqs.ondevice.runners import OrtRunner
from edgetqs.runtimes import readback
from edgetqs.runtimes.convert import ConvertResult, convert
from edgetqs.runtimes.ort import qdq_model
from edgetqs.runtimes.ort_static import fused_kernels, integer_ops, static_qdq

PI = find_target("raspberrypi")


def _int8_mlp(tmp_path: Path, hidden: int = 32, layers: int = 3) -> tuple[chain.Chain, object, bytes]:
    c = chain.scored(models.deep_mlp(tmp_path / "m.onnx", hidden=hidden, layers=layers), k=3, rows=40)
    plan = make_plan(c.scores, c.model, PI, PlanOptions(ratio=1.0, pins=(parse_pin("re:weight$=int8-channel"),), activations="int8"))
    data, _, _ = qdq_model(c.model, plan)
    return c, plan, data


def _rows(n: int = 8, width: int = 8) -> list[dict[str, np.ndarray]]:
    return [{"x": np.random.default_rng(i).standard_normal((1, width)).astype(np.float32)} for i in range(n)]


def test_dynamic_ops_run_dynamicquantizematmul_and_read_back_the_plans_integers(tmp_path: Path) -> None:
    """An op named in ``dynamic`` becomes com.microsoft.DynamicQuantizeMatMul reading the planned int8 weight
    directly (no DequantizeLinear left for it); the read-back finds the weight under its planned name, at its planned
    precision, with exactly round-to-nearest's integers (stored [K, N]); the other ops still fuse QLinearMatMul."""
    c, plan, data = _int8_mlp(tmp_path)
    ops = [k for k, _ in integer_ops(data)]
    assert len(ops) == 3
    out, facts = static_qdq(data, c.model.proto, _rows(), dynamic={ops[0], ops[2]})
    assert facts["dynamic_nodes"] == [ops[0], ops[2]] and facts["quantized_nodes"] == [ops[1]]
    assert sorted(facts["dynamic_weights"]) == ["fc0.weight", "fc2.weight"]
    kernels = fused_kernels(out)
    assert kernels.get("DynamicQuantizeMatMul", 0) == 2 and kernels.get("QLinearMatMul", 0) == 1, kernels
    path = tmp_path / "a.onnx"
    path.write_bytes(out)
    g = readback.view(path)
    for name in ("fc0.weight", "fc2.weight"):
        found, nbytes = readback.stored_precision(g, name, facts["dynamic_weights"])
        w = c.model.weight_array(name)
        assert found == "int8-channel" and nbytes == w.size + 4 * w.shape[0]
        want = quantize_int(w, parse_precision("int8-channel"), c.model.layout(name)).q
        assert np.array_equal(readback.stored_integers(g, name, facts["dynamic_weights"]), want.T)
    y = OrtRunner(out, threads=0).run(["y"], {"x": _rows()[0]["x"]})[0]
    assert np.isfinite(y).all()


def test_exact_form_computes_the_integer_arithmetic(tmp_path: Path) -> None:
    """``exact=True`` writes a dynamic op as DynamicQuantizeLinear -> DequantizeLinear -> MatMul: run unoptimised, it
    equals numpy's per-call uint8 input times the dequantized int8 weight (what ARM's kernels compute; this host's u8 x s8
    kernels may saturate)."""
    c, plan, data = _int8_mlp(tmp_path, layers=1)
    (op,) = [k for k, _ in integer_ops(data)]
    out, facts = static_qdq(data, c.model.proto, _rows(), dynamic={op}, exact=True)
    assert facts["dynamic_nodes"] == [op] and facts["dynamic_weights"] == {}
    x = _rows(1)[0]["x"].astype(np.float64)
    lo, hi = min(x.min(), 0.0), max(x.max(), 0.0)
    s = np.float32((hi - lo) / 255)
    z = np.clip(np.round(-lo / s), 0, 255)
    xq = (np.clip(np.round(x / s) + z, 0, 255) - z) * s
    qt = quantize_int(c.model.weight_array("fc0.weight"), parse_precision("int8-channel"), c.model.layout("fc0.weight"))
    w = qt.q.astype(np.float64) * qt.scale.reshape(-1, 1)
    h = xq @ w.T + c.model.weight_array("fc0.bias")
    want = x + 0.3 * np.tanh(h)
    got = OrtRunner(out, threads=0, optimize=False).run(["y"], {"x": x.astype(np.float32)})[0]
    assert np.allclose(got, want, atol=1e-5), np.abs(got - want).max()


def test_smallest_prefix_finds_the_fewest_ops_in_few_trials() -> None:
    for n in (1, 2, 5, 16, 33):
        for need in range(1, n + 1):
            calls: list[int] = []
            got = _smallest_prefix(n, lambda k, need=need, calls=calls: calls.append(k) or k >= need)
            assert got == need and len(calls) <= 2 * math.ceil(math.log2(n)) + 2, (n, need, calls)
        assert _smallest_prefix(n, lambda k: False) is None
    assert _smallest_prefix(0, lambda k: True) is None


def test_choice_keeps_the_most_damaging_ops_wider_until_the_goal_holds(tmp_path: Path) -> None:
    """Every activation group gets a TQS score (its own quantization residual, rolled out); with the goal between the
    weights-alone error and the all-int8 error the ladder widens a prefix of the ops, most damaging first, and the
    chosen artifact meets the goal; an unreachable goal keeps every activation float and says why; an infinite goal
    keeps every activation int8."""
    c, plan, data = _int8_mlp(tmp_path, hidden=24, layers=4)
    args = (c.model, c.spec, c.contexts, data, c.model.proto, _rows(16), 12)
    every = choose_activations(*args, tolerance=0.1, goal=math.inf)
    assert set(every.modes.values()) == {"int8"} and every.weights_alone is None and every.error is not None
    groups = activation_groups(data)
    assert {s.op for s in every.scores if s.mode == "int8"} == {g["op"] for g in groups}
    assert all(s.eps > 0 and s.error is not None and s.error > 0 and s.gamma is not None for s in every.scores)
    strict = choose_activations(*args, tolerance=1e-12)
    assert set(strict.modes.values()) == {"float"} and strict.weights_alone is not None
    assert "no activation can run integer" in strict.summary()
    floor = strict.weights_alone
    assert floor < every.error  # activations add error to the weights'
    goal = (floor + every.error) / 2
    mid = choose_activations(*args, tolerance=goal / 0.7)
    assert mid.goal == pytest.approx(goal) and mid.error is not None and mid.error <= goal
    assert any(m != "int8" for m in mid.modes.values()) and any(t.wider == () and not t.passed for t in mid.trials)
    damage = {s.op: s.error for s in mid.scores if s.mode == "int8"}
    wide = [op for op, m in mid.modes.items() if m != "int8"]
    narrow = [op for op, m in mid.modes.items() if m == "int8"]
    if narrow:  # the first rung widened the most damaging ops
        assert min(damage[o] for o in wide) >= max(damage[o] for o in narrow) or any(m == "float" for m in mid.modes.values())
    assert "activations chosen by TQS in context" in mid.summary()
    # more contexts: every trial must meet the goal on both sets (here the same contexts twice: the same choice)
    both = choose_activations(*args, tolerance=goal / 0.7, also=c.contexts)
    assert both.modes == mid.modes and both.check_contexts == c.contexts.k and both.error == mid.error
    assert f"and the {c.contexts.k} the check draws" in both.summary()


def test_convert_records_the_choice_and_checks_the_exact_arithmetic(tmp_path: Path) -> None:
    """convert with int8 activations on the Pi: the choice lands in convert.json (facts.activation_choice, one note),
    the ops it keeps float stay float Gemms, and the host check runs the exact form (finite, within the goal's reach)."""
    c, plan, data = _int8_mlp(tmp_path, hidden=24, layers=4)
    r = convert(c.model, plan, "ort", tmp_path / "out", c.contexts, c.spec)
    choice = r.facts["activation_choice"]
    assert set(choice["modes"]) == {k for k, _ in integer_ops(data)}
    assert any(("activations" in n and "TQS" in n) or "stays float" in n for n in r.notes)
    # the check's contexts (drawn from the whole record for its horizon) are measured too
    assert choice["check_contexts"] in (0, c.contexts.k)
    back = ConvertResult.load(tmp_path / "out" / "convert.json")
    assert back.facts["activation_choice"] == choice
    from edgetqs.bundle.report import _activations

    html = _activations(back)  # the bundle report's section: every group's score and rung, every trial
    assert "<h2>Activations</h2>" in html and all(f"<td>{op}</td>" in html for op in choice["modes"])
    assert html.count("<li>") == len(choice["trials"])
    assert all(e is not None and np.isfinite(e) for e in r.error_by_lead)
    if r.activations == "int8":
        st = r.facts["ort_static"]
        assert sorted(st["float_nodes"]) == sorted(op for op, m in choice["modes"].items() if m == "float")
        assert "MatMulNBits" not in st["optimized_graph_ops"]


def test_activation_goal_is_checked_before_any_work(tmp_path: Path) -> None:
    for bad in (0.0, -1.0, math.nan):
        with pytest.raises(BadInputError, match="activation-goal"):
            api.convert(tmp_path / "missing.onnx", tmp_path / "plan.json", "ort", tmp_path, activation_goal=bad)
    with pytest.raises(BadInputError, match="only ort"):
        api.convert(tmp_path / "missing.onnx", tmp_path / "plan.json", "ort-mobile", tmp_path, activation_goal=0.05)


@pytest.mark.qemu
def test_arm_kernels_compute_the_exact_form(tmp_path: Path) -> None:
    """On the emulated Cortex-A72, onnxruntime's QLinearMatMul and DynamicQuantizeMatMul give the exact form's outputs
    (to float rounding): what the host measures the choice with is what the Pi computes."""
    from edgetqs.validation.devices import GUEST_PYTHON, find_device

    c, plan, data = _int8_mlp(tmp_path, hidden=64, layers=3)
    ops = [k for k, _ in integer_ops(data)]
    rows = _rows(20)
    fused, _ = static_qdq(data, c.model.proto, rows, dynamic={ops[1]})
    exact, _ = static_qdq(data, c.model.proto, rows, dynamic={ops[1]}, exact=True)
    (tmp_path / "fused.onnx").write_bytes(fused)
    x = np.concatenate([r["x"] for r in rows])
    np.save(tmp_path / "x.npy", x)
    want = np.concatenate([OrtRunner(exact, threads=0, optimize=False).run(["y"], {"x": r["x"]})[0] for r in rows])
    script = tmp_path / "run.py"
    script.write_text(
        "import sys, numpy as np, onnxruntime as ort\n"
        "d = sys.argv[1]\n"
        "s = ort.InferenceSession(d + '/fused.onnx', providers=['CPUExecutionProvider'])\n"
        "x = np.load(d + '/x.npy')\n"
        "np.save(d + '/y.npy', np.concatenate([s.run(['y'], {'x': x[i:i + 1]})[0] for i in range(len(x))]))\n"
    )
    dev = find_device("qemu-pi4")
    root = dev.sysroot_path()
    subprocess.run(
        ["qemu-aarch64-static", "-cpu", dev.cpu, "-L", str(root), str(root / GUEST_PYTHON), str(script), str(tmp_path)],
        check=True,
        timeout=300,
    )
    got = np.load(tmp_path / "y.npy")
    assert np.abs(got - want).max() < 1e-4, np.abs(got - want).max()


def test_narrow_back_takes_back_the_ops_a_forced_round_widened_for_company() -> None:
    """After a round where no prefix passed (every op one rung wider), ops go back one rung at a time, least damaging
    first, while the goal holds; a step that missed is not tried again. The case is station's on LiteRT: l1 centred with
    l2/l3 float failed (0.073), so every op went wider and the next round left all three float (0.0495), while l1
    centred with l2/l3 dynamic passes (0.0555)."""
    from edgetqs.allocation.activations import ActivationScore, _narrow_back

    ladders = {"l1": ["dynamic", "centred", "float"], "l2": ["dynamic", "float"], "l3": ["dynamic", "float"]}
    errors = {  # the trials' errors, by the modes of (l1, l2, l3)
        ("float", "float", "float"): 0.0495,
        ("float", "dynamic", "float"): 0.055,
        ("float", "dynamic", "dynamic"): 0.059,
        ("centred", "dynamic", "dynamic"): 0.0555,
        ("dynamic", "dynamic", "dynamic"): 0.105,
    }
    damage = {("l1", "centred"): 0.3, ("l1", "dynamic"): 0.4, ("l2", "dynamic"): 0.01, ("l3", "dynamic"): 0.02}
    measured: list[tuple[str, ...]] = []

    def measure(modes: dict[str, str]) -> float:
        key = (modes["l1"], modes["l2"], modes["l3"])
        measured.append(key)
        return errors.get(key, 1.0)

    def score(op: str, mode: str) -> ActivationScore:
        return ActivationScore(op=op, op_type="Gemm", mode=mode, tensors=(), eps=0.01, gamma=None, error=damage[(op, mode)])

    out = _narrow_back({"l1": "float", "l2": "float", "l3": "float"}, ladders.__getitem__, score, measure, 0.07)
    assert out == {"l1": "centred", "l2": "dynamic", "l3": "dynamic"}
    # least damaging first (l2, then l3, then l1); l1 at dynamic misses the goal and is not tried again
    assert measured == [
        ("float", "dynamic", "float"),
        ("float", "dynamic", "dynamic"),
        ("centred", "dynamic", "dynamic"),
        ("dynamic", "dynamic", "dynamic"),
    ]


def test_a_kernel_that_feeds_only_an_activation_carries_it_and_int8_act_rounds_it_too(tmp_path: Path) -> None:
    """`kernel_groups` gives a Conv/Gemm/MatMul the elementwise activation its output alone feeds (``act``), the
    `int8-act` rung's third tensor; not where the output has another reader, where the next op is not an activation,
    or where the activation is a graph output. `_fake_quant` at ``int8-act`` rounds the input, the output and the
    activation's output, each at its calibrated scale: the model's output moves off ``int8``'s."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetqs.allocation.activations import _fake_quant, _residuals, kernel_groups
    from edgetqs.ondevice.runners import OrtRunner

    rng = np.random.default_rng(0)
    w = {f"w{i}": numpy_helper.from_array((rng.standard_normal((8, 8)) / 3).astype(np.float32), f"w{i}") for i in range(4)}
    nodes = [
        helper.make_node("MatMul", ["x", "w0"], ["h0"]),
        helper.make_node("Tanh", ["h0"], ["a0"]),  # carried
        helper.make_node("MatMul", ["a0", "w1"], ["h1"]),
        helper.make_node("Sigmoid", ["h1"], ["a1"]),
        helper.make_node("Add", ["h1", "a1"], ["s1"]),  # h1 has a second reader: no act
        helper.make_node("MatMul", ["s1", "w2"], ["h2"]),
        helper.make_node("Add", ["h2", "x"], ["s2"]),  # not an activation
        helper.make_node("MatMul", ["s2", "w3"], ["h3"]),
        helper.make_node("Tanh", ["h3"], ["y"]),  # a graph output
    ]
    graph = helper.make_graph(
        nodes,
        "acts",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        list(w.values()),
    )
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(proto)
    groups = {g["weight"]: g for g in kernel_groups(proto, set(w))}
    assert groups["w0"]["act"] == "a0" and groups["w0"]["act_type"] == "Tanh"
    assert all("act" not in groups[k] for k in ("w1", "w2", "w3"))
    rows = _rows()
    lo_hi, _, _ = _residuals(proto, ["x", "h0", "a0"], rows)
    outs = {}
    for mode in ("int8", "int8-act"):
        fq = onnx.load_from_string(_fake_quant(proto, groups["w0"], mode, lo_hi))
        q = [n.input[0] for n in fq.graph.node if n.op_type == "QuantizeLinear"]
        assert sorted(q) == (["a0", "h0", "x"] if mode == "int8-act" else ["h0", "x"])
        outs[mode] = OrtRunner(fq.SerializeToString()).run(["y"], rows[0])[0]
    ref = OrtRunner(proto.SerializeToString()).run(["y"], rows[0])[0]
    assert np.abs(outs["int8"] - ref).max() > 0 and not np.allclose(outs["int8-act"], outs["int8"])
