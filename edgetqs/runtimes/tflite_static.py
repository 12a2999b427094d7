"""Full-integer TFLite for LiteRT on a Pi-class CPU: ``--activations int8|int16`` on the tflite route.

Dynamic range (`edgetqs.runtimes.tflite`) quantizes each kernel's input per call and dequantizes its output, so
every elementwise op between kernels still runs in float. A full-integer graph runs those in integers too (XNNPACK's
QS8 kernels for int8; int16x8 on LiteRT's reference kernels): Lorenz-96 (Conv1d + Tanh) ran at 0.17-0.29x of
onnxruntime's fp32 under qemu-pi4 in int8 and 0.44-0.50x in int16, where dynamic range ran at 0.73x
(docs/latency.md).

The float graph is the one the TFLite-Micro route quantizes (`edgetqs.runtimes.tflm.float_graph`: TensorFlow's
converter from onnx2tf's SavedModel, with the ``serving_default`` signature ai-edge-quantizer's calibrator needs),
calibrated with min/max on the float model's closed-loop rollouts. Unlike a microcontroller, LiteRT runs float ops
too, so the TQS ladder (`edgetqs.allocation.activations.choose_activations`, rungs ``int8|int16 -> float``) keeps the
kernels whose activations the rollout does not tolerate in float: such a kernel computes in float between
DEQUANTIZE/QUANTIZE with its weight stored as planned (weight-only); with every kernel float the artifact is the
weight-only one. A kernel the plan keeps at fp16/fp32 is a float island from the start. The file's inputs and outputs
are integers at their calibrated scales (`edgetqs.ondevice.runners.LiteRunner` quantizes the window and dequantizes
the forecast); its tensors are looked up through the signature.
"""

from __future__ import annotations

from typing import Any

from .base import Converted, ConvertJob
from .convert import TensorCheck
from .litert import WEIGHT_OPS, io_dicts, quiet_tensorflow, versions

_PACKAGES = ("onnx2tf", "ai-edge-quantizer", "ai-edge-litert", "tensorflow")
STATIC = ("int8", "int16")  # the tflite route's full-integer activation modes


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


def _checks(plan: Any, stored: dict[str, list[tuple[str, int]]], matched: list[Any], act: str, float_scopes: set[str]) -> list[TensorCheck]:
    """Per planned tensor, what the file stores: a weight exactly as planned; a bias or an elementwise constant at
    the integer width its kernel needs, or float32 where its kernel computes in float (a float island)."""
    from .tflm import _bits

    kinds: dict[str, list[Any]] = {}
    for f in matched:
        kinds.setdefault(f.tensor, []).append(f)
    checks = []
    for t in plan.tensors:
        got = stored.get(t.name)
        if not got:  # folded by the converter into another constant
            checks.append(TensorCheck(name=t.name, planned=t.precision.name, found="folded", match=True, bytes=0))
            continue
        ok = True
        for (found, _), f in zip(got, kinds[t.name]):
            if f.is_weight:
                ok &= found == f.precision.name
            elif all(sc in float_scopes for sc, _ in f.weight_scopes):
                ok &= found in ("fp32", "fp16") or (found.startswith("int") and _bits(found) >= _bits(act))
            else:
                ok &= found.startswith("int") and _bits(found) >= min(t.precision.bits, _bits(act))
        names_ = [g for g, _ in got]
        label = names_[0] if len(set(names_)) == 1 else "+".join(names_)
        checks.append(TensorCheck(name=t.name, planned=t.precision.name, found=label, match=ok, bytes=sum(b for _, b in got)))
    return checks


def convert_full_integer(job: ConvertJob, act: str) -> Converted:
    """The full-integer LiteRT artifact with the float islands TQS chose, its read-back and a host session on it."""
    quiet_tensorflow()
    from ..allocation.activations import choose_activations, kernel_groups
    from ..ondevice.runners import LiteRunner
    from .tflite import _quantize
    from .tflite_integers import against_plan, write_plan_integers
    from .tflm import _readback, float_graph, io_order, shared_copies

    plan, work = job.plan, job.work
    g = float_graph(job, "tflite")
    integers = job.plan_integers()
    rows = job.rows()
    fp32_scopes, planned_fp32, planned_float = _islands(g.matched)
    able = {f.tensor for f in g.matched if _kernel_weight(f) and f.precision.kind == "int" and f.precision.bits == 8}
    quantized = [f for f in g.matched if f.precision.name != "fp32"]

    def build(float_weights: frozenset[str]) -> bytes:
        if able and float_weights >= able:  # every kernel float: the weight-only artifact (the weights alone)
            buf = _quantize(g.fbuf, quantized, set())
            return buf if integers is None else write_plan_integers(buf, g.fm, quantized, integers, job.model)
        buf = g.quantize(rows, act, fp32_scopes, planned_float | float_weights)
        return buf if integers is None else write_plan_integers(buf, g.fm, g.matched, integers, job.model, biases=True)

    ins, outs = io_dicts(job.model)

    def session(data: bytes) -> Any:
        order_in, order_out = io_order(data, [i["name"] for i in ins], [o["name"] for o in outs])
        return LiteRunner(data, ins, outs, order_in=order_in, order_out=order_out)

    groups = kernel_groups(job.model.proto, able)
    weight = {gr["op"]: gr["weight"] for gr in groups}
    steps, tol = job.check_settings()
    choice = None
    if groups:
        choice = choose_activations(
            job.model,
            job.spec,
            job.contexts,
            b"",
            job.model.proto,
            rows,
            steps,
            tol,
            goal=job.activation_goal,
            build=lambda modes: build(frozenset(weight[op] for op, m in modes.items() if m == "float")),
            groups=groups,
            session=session,
            rungs=(act, "float"),
            dynamic_ops=(),
            also=job.check_contexts(steps),
        )
        float_weights = frozenset(weight[op] for op in choice.ops("float"))
    else:
        float_weights = frozenset()
    every_float = bool(able) and float_weights >= able
    buf = build(float_weights)
    artifact = work / job.file_name
    artifact.write_bytes(buf)
    model = g.prep.model
    # the scopes computing in float: planned fp16/fp32 kernels, and the int8 ones TQS kept float (all, when every one is)
    float_scopes = set(fp32_scopes)
    for f in g.matched:
        if every_float or f.tensor in planned_float | float_weights:
            float_scopes.update(sc for sc, _ in f.weight_scopes)
    stored, total, _ = _readback(buf, g.fm, g.matched)
    checks = _checks(plan, stored, g.matched, act, float_scopes)
    checks = against_plan(buf, quantized if every_float else g.matched, integers, checks, plan.rounding)
    in_order, out_order = io_order(buf, [i.name for i in model.inputs], [o.name for o in model.outputs])
    dup_n, dup_bytes = shared_copies(buf)
    floats = sorted(float_weights | planned_float | planned_fp32)
    notes = list(g.notes)
    notes.append(
        "the weight-only artifact: every kernel's activations stay float (the full-integer graph misses the goal)"
        if every_float
        else f"full-integer LiteRT graph, {act} activations (every op ai-edge-quantizer supports), "
        f"{len(able - float_weights)} int8 kernel(s) integer, {len(floats)} computing in float between DEQUANTIZE/QUANTIZE; "
        f"inputs and outputs {act} at their calibrated scales"
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
        "shared_bias_copies": {"tensors": dup_n, "bytes": dup_bytes},
    }
    if choice is not None:
        facts["activation_choice"] = choice.model_dump(mode="json")
    return Converted(artifact, checks, total, session(buf), notes=notes, facts=facts, versions=versions(_PACKAGES))
