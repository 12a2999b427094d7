"""Static integer activations for LiteRT on a Pi-class CPU: ``--activations int8|int16`` on the tflite route.

- ``int8``: static int8 kernels. Each kernel of a planned int8 weight (FULLY_CONNECTED, CONV_2D) reads and writes
  int8 at ranges calibrated on closed-loop rollouts: XNNPACK's QS8 kernels, with QUANTIZE/DEQUANTIZE around them.
  The ops between kernels (the residual adds, the input and output) stay float, as onnxruntime's static QDQ does.
  The TQS ladder (`edgetqs.allocation.activations.choose_activations`, rungs ``int8 -> dynamic -> float``) widens
  the kernels the rollout does not tolerate: to dynamic range, then to float (weight-only).
- A kernel whose output feeds only an elementwise activation (TANH, LOGISTIC, HARD_SWISH, GELU, RELU) gets a
  narrower first rung, ``int8-act``: the activation runs int8 too (a lookup table), between the kernel and its
  DEQUANTIZE. Float activations are what qemu emulates most slowly: Lorenz-96's five int8 convolutions ran at 0.55x
  fp32 on qemu-pi4 with float Tanh and 0.33x with int8 Tanh, at the same rollout error (0.093 / 0.094, every op).
  A residual add stays float: an 8-bit state drifts (below).
- ``int16``: a full-integer int16x8 graph (every op ai-edge-quantizer supports; inputs and outputs int16 at their
  calibrated scales), rungs ``int16 -> float``. For rollouts whose state an 8-bit tensor cannot carry. It is not a
  speed mode: XNNPACK has no int16 kernels, LiteRT runs its reference ones. Lorenz-96 ran at 8.9x onnxruntime's
  fp32 on the x86-64 host (median of 13 processes), while qemu's cost model (cheap integer, expensive float) put it
  at 0.55x (docs/latency.md).

A full-integer int8 graph was measured and not offered: Lorenz-96's 8-bit state drifted to 0.249 over 20 steps
(kernels only: 0.093), and natively it ran at 0.93x fp32 against 0.50x for the kernels alone.

The float graph is the one the TFLite-Micro route quantizes (`edgetqs.runtimes.tflm.float_graph`: TensorFlow's
converter from onnx2tf's SavedModel, with the ``serving_default`` signature ai-edge-quantizer's calibrator needs).
A kernel the plan keeps fp16/fp32/int4 computes in float with its weight stored as planned; with every kernel float
the artifact is the weight-only file. `edgetqs.ondevice.runners.LiteRunner` finds the tensors through the signature
and quantizes integer inputs and dequantizes integer outputs.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

from .base import Converted, ConvertError, ConvertJob
from .litert import WEIGHT_OPS, io_dicts, quiet_tensorflow, versions

_PACKAGES = ("onnx2tf", "ai-edge-quantizer", "ai-edge-litert", "tensorflow")


# int16 ranges are calibrated x4 (2 of 16 bits): the state itself is int16 in a full-integer graph, and a state
# beyond the calibrated rollouts was clipped (a forced AR(1) state: 0.113 on the check's contexts against 5e-5 on the
# conversion's; station's l1 int16 input: 0.365 against 0.063)
INT16_MARGIN = 4.0


def _kernel_weight(f: Any) -> bool:
    return bool(f.is_weight and all(WEIGHT_OPS.get(op) is not None for _, op in f.weight_scopes))


def _islands(matched: list[Any]) -> tuple[tuple[str, ...], frozenset[str], frozenset[str]]:
    """The kernels the plan keeps float: (scopes of fp32 kernels, left unquantized; their weights; weights stored
    as planned in float kernels: fp16 by float casting, int4 weight-only)."""
    scopes: list[str] = []
    fp32: set[str] = set()
    weight_only: set[str] = set()
    for f in matched:
        if not _kernel_weight(f):
            continue
        p = f.precision
        if p.name == "fp32":
            scopes += [sc for sc, _ in f.weight_scopes]
            fp32.add(f.tensor)
        elif p.kind == "float" or p.bits != 8:
            weight_only.add(f.tensor)
    return tuple(scopes), frozenset(fp32), frozenset(weight_only)


def kernel_activations(fm: Any, matched: list[Any]) -> dict[str, tuple[str, str]]:
    """Planned int8 kernel weight -> (scope, builtin) of the elementwise activation its kernel's output alone feeds in
    the float TFLite graph (`edgetqs.allocation.activations.INT8_ACTS`), neither being a graph output."""
    from ..allocation.activations import INT8_ACTS
    from .litert import consumers, names, op_name, schema, scope

    ops, _ = names(schema())
    sg = fm.subgraphs[0]
    by_scope = {scope(sg, op): op for op in sg.operators}
    readers = consumers(sg)
    outputs = {int(i) for i in sg.outputs}
    wanted = set(INT8_ACTS.values())
    found: dict[str, tuple[str, str]] = {}
    for f in matched:
        p = f.precision
        if not (_kernel_weight(f) and p.kind == "int" and p.bits == 8 and len(f.weight_scopes) == 1):
            continue
        kernel = by_scope.get(f.weight_scopes[0][0])
        if kernel is None or len(kernel.outputs) != 1:
            continue
        out = int(kernel.outputs[0])
        after = [op for op, _ in readers.get(out, [])]
        if len(after) != 1 or out in outputs or any(int(o) in outputs for o in after[0].outputs):
            continue
        name = op_name(fm, after[0], ops)
        if name in wanted:
            found[f.tensor] = (scope(sg, after[0]), name)
    return found


def convert_static(job: ConvertJob, act: str) -> Converted:
    """The static-activation LiteRT artifact with the rungs TQS chose, its read-back and a host session on it."""
    quiet_tensorflow()
    from ..allocation.activations import INT8_ACTS, kernel_groups
    from ..ondevice.runners import LiteRunner
    from .tflite import _Integers, _quantize, choose_on_litert
    from .tflite_integers import against_plan, write_plan_integers
    from .tflm import _readback, float_graph, io_order, shared_copies, tensor_checks

    plan, work = job.plan, job.work
    full = act == "int16"  # int16: every op integer; int8: the kernels only
    rungs = (act, "float") if full else ("int8", "dynamic", "float")
    g = float_graph(job, "tflite")
    integers = job.plan_integers()
    rows = job.rows()
    fp32_scopes, planned_fp32, planned_float = _islands(g.matched)
    able = {f.tensor for f in g.matched if _kernel_weight(f) and f.precision.kind == "int" and f.precision.bits == 8}
    quantized = [f for f in g.matched if f.precision.name != "fp32"]

    def build(float_weights: frozenset[str], dynamic: frozenset[str], fused: frozenset[str] = frozenset()) -> bytes:
        if able and float_weights >= able:  # every kernel float: the weight-only artifact (the weights alone)
            return _quantize(g.fbuf, quantized, set(), None if integers is None else _Integers(integers, g.fm, job.model))
        buf = g.quantize(
            rows,
            act,
            fp32_scopes,
            planned_float | float_weights,
            dynamic,
            everything=full,
            range_margin=INT16_MARGIN if full else 1.0,
            activations=tuple(sorted(acts[w] for w in fused)),
        )
        return buf if integers is None else write_plan_integers(buf, g.fm, g.matched, integers, job.model, biases=True)

    ins, outs = io_dicts(job.model)

    def session(data: bytes) -> Any:
        order_in, order_out = io_order(data, [i["name"] for i in ins], [o["name"] for o in outs])
        return LiteRunner(data, ins, outs, order_in=order_in, order_out=order_out)

    groups = kernel_groups(job.model.proto, able)
    acts = {} if full else kernel_activations(g.fm, g.matched)
    for gr in groups:  # the int8-act rung where the ONNX graph and the TFLite one agree on the activation
        if "act" in gr and acts.get(gr["weight"], ("", ""))[1] == INT8_ACTS[gr["act_type"]]:
            gr["rungs"] = ("int8-act", *rungs)
        else:
            gr.pop("act", None)
    weight = {gr["op"]: gr["weight"] for gr in groups}

    def weights_at(modes: dict[str, str], rung: str) -> frozenset[str]:
        return frozenset(weight[op] for op, m in modes.items() if m == rung)

    made: dict[tuple[frozenset[str], ...], bytes] = {}  # the final artifact is one the ladder measured

    def trial(ms: dict[str, str]) -> bytes:
        key = (weights_at(ms, "float"), weights_at(ms, "dynamic"), weights_at(ms, "int8-act"))
        if key not in made:
            made[key] = build(*key)
        return made[key]

    notes = list(g.notes)
    offered = {gr["op"]: "int8-act" for gr in groups if "act" in gr}
    if offered:  # the quantizer or LiteRT may refuse an integer activation: then the kernels alone, as before the rung
        try:
            session(trial(offered))
        except (ConvertError, RuntimeError, ValueError) as exc:
            for gr in groups:
                if gr.pop("act", None) is not None:
                    gr.pop("rungs")
            notes.append(f"the activations after the int8 kernels stay float: an int8 one could not be made ({str(exc)[:200]})")

    choice = None
    modes: dict[str, str] = {}
    if groups:
        choice = choose_on_litert(job, groups, trial, session, rungs)
        modes = dict(choice.modes)
    float_weights, dynamic, fused = weights_at(modes, "float"), weights_at(modes, "dynamic"), weights_at(modes, "int8-act")
    every_float = bool(able) and float_weights >= able
    buf = trial(modes)
    artifact = work / job.file_name
    artifact.write_bytes(buf)
    model = g.prep.model
    # scopes whose biases and constants may stay float: planned float kernels and the int8 ones at a wider rung (int8
    # mode: every scope, since only the integer kernels' are integer, and `tensor_checks` holds those to int_kernels)
    float_scopes = set(fp32_scopes)
    for f in g.matched:
        if every_float or not full or f.tensor in planned_float | float_weights | dynamic:
            float_scopes.update(sc for sc, _ in f.weight_scopes)
    stored, total, _ = _readback(buf, g.fm, g.matched)
    int_kernels = frozenset() if every_float else frozenset(able - float_weights - dynamic)
    checks = tensor_checks(plan, stored, g.matched, act, [], float_ops=float_scopes, int_kernels=int_kernels)
    checks = against_plan(buf, quantized if every_float else g.matched, integers, checks, plan.rounding)
    in_order, out_order = io_order(buf, [i.name for i in model.inputs], [o.name for o in model.outputs])
    dup_n, dup_bytes = shared_copies(buf)
    floats = sorted(float_weights | planned_float | planned_fp32)
    n_int = len(able - float_weights - dynamic)
    if every_float:
        notes.append("the weight-only artifact: every kernel's activations stay float (the integer graph misses the goal)")
    elif full:
        notes.append(
            f"full-integer LiteRT graph, int16 activations (every op ai-edge-quantizer supports), {n_int} int8 kernel(s) "
            f"integer, {len(floats)} computing in float between DEQUANTIZE/QUANTIZE; inputs and outputs int16 at their calibrated "
            "scales. LiteRT runs int16x8 on its reference kernels (XNNPACK has none): for accuracy, not speed "
            "(Lorenz-96: 8.9x fp32 on an x86-64 host)"
        )
    else:
        with_act = ", ".join(f"{n} x{k}" for n, k in sorted(Counter(acts[w][1] for w in fused).items()))
        notes.append(
            f"static int8 kernels: {n_int} integer (XNNPACK's QS8, ranges calibrated)"
            + (f", {len(fused)} of them with their activation int8 too ({with_act})" if fused else "")
            + f", {len(dynamic)} dynamic range, {len(floats)} in float; the other ops between kernels stay float"
        )
    if integers is not None:
        notes.append(
            f"the weights' integers and scales are the plan's {plan.rounding} rounding, written over the quantizer's round-to-nearest"
            + ("" if every_float else "; the integer kernels' biases requantized at input scale x the new weight scales")
        )
    if choice is not None:
        notes.append(choice.summary())
    if dup_n:
        notes.append(f"the quantizer stored {dup_n} extra copies of shared constants ({dup_bytes:,} bytes) the plan does not price")
    facts: dict[str, Any] = {
        "prepared": g.prep.record(),
        "activations": "float" if every_float else act,
        "rounding": plan.rounding,
        "calibration_inputs": len(rows),
        "tflite_inputs": in_order,
        "tflite_outputs": out_order,
        "float_weights": floats,  # the kernels computing in float: planned fp16/fp32/int4, or kept float by TQS
        "dynamic_weights": sorted(dynamic),
        # kernel weight -> the activation its int8 output feeds, run int8 too (the int8-act rung)
        "integer_activations": {w: acts[w][1] for w in sorted(fused)},
        "shared_bias_copies": {"tensors": dup_n, "bytes": dup_bytes},
    }
    if choice is not None:
        facts["activation_choice"] = choice.model_dump(mode="json")
    return Converted(artifact, checks, total, session(buf), notes=notes, facts=facts, versions=versions(_PACKAGES))
