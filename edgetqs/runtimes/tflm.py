"""TFLite-Micro artifacts: a full-integer TFLite model for microcontrollers, with its arena measured.

The route: ONNX -> SavedModel (onnx2tf) -> float TFLite with a ``serving_default`` signature
(TensorFlow's converter; onnx2tf's own .tflite has no signature and ai-edge-quantizer's calibrator
needs one) -> static quantization by ai-edge-quantizer: weights int8 per channel or per tensor as
the plan says, activations int16 where the target allows (int16x8: a single input scale spans
variables of very different ranges, and int8 rounds the small ones to nothing), else int8. The
activation ranges are calibrated with min/max (not the default moving average, which shrinks
ranges until the output is garbage) on the float model's own closed-loop rollouts from the
contexts, because an autoregressive model leaves the teacher-forced range as it rolls out.

The tensor arena is measured with the tflite-micro interpreter: an arena that is too small
segfaults the process instead of raising, so each size is tried in a child process and the
smallest that loads and runs is found by bisection, beside the figure the interpreter's recording
allocator prints. The arena is checked against the target's RAM budget and the file (which lives
in flash) against its weight budget.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quantize import Storage
from .base import Converted, ConvertError, ConvertJob, RuntimeInfo
from .convert import TensorCheck
from .litert import (
    WEIGHT_OPS,
    cache_bytes,
    cache_file,
    float_tflite,
    input_perms,
    io_dicts,
    match_planned,
    names,
    qbytes,
    quiet_tensorflow,
    schema,
    scope,
    versions,
)
from .litert import require as _require

_PACKAGES = ("onnx2tf", "ai-edge-quantizer", "ai-edge-litert", "tensorflow", "tflite-micro")

ARENA_ALIGN = 16  # TFLM aligns arena allocations to 16 bytes
ARENA_CEILING = 256 * 2**20  # a model that does not run in 256 MiB does not run on a microcontroller

_SAVED_TO_TFLITE = r"""
import sys, tensorflow as tf
conv = tf.lite.TFLiteConverter.from_saved_model(sys.argv[1])
open(sys.argv[2], "wb").write(conv.convert())
"""

# Loads the model with a given arena, runs it once on zeros, prints the recording allocator's report.
_PROBE = r"""
import ctypes, sys
import numpy as np
from tflite_micro import runtime
it = runtime.Interpreter.from_file(sys.argv[1], arena_size=int(sys.argv[2]))
for i in range(int(sys.argv[3])):
    d = it.get_input_details(i)
    it.set_input(np.zeros(d["shape"], d["dtype"]), i)
it.invoke()
it.print_allocations()
ctypes.CDLL(None).fflush(None)
"""


def require() -> None:
    _require(
        "mcu",
        "converting for TFLite-Micro",
        (
            ("tflite_micro", "tflite-micro"),
            ("onnx2tf", "onnx2tf"),
            ("tensorflow", "tensorflow"),
            ("ai_edge_quantizer", "ai-edge-quantizer"),
        ),
    )


def _require_light() -> None:
    """`require` without importing TensorFlow (seconds): the packages are looked up, not loaded."""
    import importlib.util

    from ..errors import OptionalDependencyError

    for mod, pkg in (
        ("tflite_micro", "tflite-micro"),
        ("onnx2tf", "onnx2tf"),
        ("tensorflow", "tensorflow"),
        ("ai_edge_litert", "ai-edge-litert"),
    ):
        if importlib.util.find_spec(mod) is None:
            raise OptionalDependencyError(pkg, "mcu", "pricing a plan for TFLite-Micro exactly")


def signature_tflite(model: Any, work: Path, target: Any = None) -> bytes:
    """Float TFLite with a ``serving_default`` signature, from the SavedModel onnx2tf writes.

    Cached by the graph's bytes and the converters' versions (the planner prices from this graph and
    convert quantizes it: one conversion serves both)."""
    cached = cache_file(model, "signature.tflite")
    if cached.is_file():
        return cached.read_bytes()
    data = _signature_tflite(model, work, target)
    cache_bytes(cached, data)
    return data


def _signature_tflite(model: Any, work: Path, target: Any = None) -> bytes:
    float_tflite(model, work, target)
    out = work / "float_signature.tflite"
    r = subprocess.run(
        [sys.executable, "-c", _SAVED_TO_TFLITE, str(work / "onnx2tf"), str(out)], capture_output=True, text=True, timeout=600
    )
    if r.returncode != 0 or not out.exists():
        tail = [ln for ln in r.stderr.splitlines() if ln.strip()][-3:]
        raise ConvertError("TensorFlow could not convert onnx2tf's SavedModel to TFLite: " + " | ".join(tail)[:400])
    return out.read_bytes()


def _signature(m: Any) -> tuple[dict[str, int], list[int]]:
    sd = m.signatureDefs[0]
    return {t.name.decode(): t.tensorIndex for t in sd.inputs}, [t.tensorIndex for t in sorted(sd.outputs, key=lambda t: t.name)]


def io_order(buf: bytes, inputs: list[str], outputs: list[str]) -> tuple[dict[str, int], dict[str, int]]:
    """ONNX input/output name -> position among the TFLite subgraph's inputs/outputs (what the
    tflite-micro interpreter indexes by), through the ``serving_default`` signature."""
    m = schema().ModelT.InitFromPackedBuf(buf, 0)
    if not m.signatureDefs:
        raise ConvertError("the TFLite model has no signature; convert it with edgetqs convert --format tflm")
    sig_in, sig_out = _signature(m)
    keys = _input_keys(inputs, sig_in)
    sg = m.subgraphs[0]
    ins = {n: list(sg.inputs).index(sig_in[keys[n]]) for n in inputs}
    outs = {n: list(sg.outputs).index(sig_out[k]) for k, n in enumerate(outputs)}
    return ins, outs


def _input_keys(inputs: list[str], sig_inputs: dict[str, int]) -> dict[str, str]:
    """ONNX input name -> signature input name (onnx2tf keeps names with -coion; else by order)."""
    keys = list(sig_inputs)
    out = {}
    for k, name in enumerate(inputs):
        cand = [s for s in keys if s == name or s == re.sub(r"[^0-9A-Za-z_]", "_", name)]
        out[name] = cand[0] if cand else keys[k]
    return out


def quantize_static(
    fbuf: bytes,
    matched: list[Any],
    rows: list[dict[str, np.ndarray]],
    act_bits: int,
    in_perm: dict[str, Any],
    keys: dict[str, str],
    float_scopes: tuple[str, ...] = (),
    weight_only: frozenset[str] = frozenset(),
    dynamic: frozenset[str] = frozenset(),
    everything: bool = True,
    range_margin: float = 1.0,
    activations: tuple[tuple[str, str], ...] = (),
) -> bytes:
    """Static (full-integer) quantization of a float TFLite graph with ai-edge-quantizer: int8 weights (per
    channel or per tensor as the plan says), ``act_bits`` activations calibrated with min/max on ``rows``.

    ``float_scopes``: op scopes left in float (LiteRT runs them between DEQUANTIZE/QUANTIZE; TFLite-Micro cannot).
    ``weight_only``: planned weights whose kernels compute in float with the weight stored as planned (LiteRT:
    the float islands `edgetqs.runtimes.tflite_static` chooses; the weight keeps the plan's bytes).
    ``dynamic``: planned int8 weights whose kernels run dynamic range instead (LiteRT).
    ``everything``: every op ai-edge-quantizer supports is integer (full integer); False: only the kernels of the
    planned int8 weights, the ops between them stay float (LiteRT's static int8 kernels).
    ``range_margin``: every calibrated range times this (int16 has the resolution to spare).
    ``activations``: (scope, builtin) of elementwise ops made integer beside the kernels when ``everything`` is False
    (LiteRT: the activation an int8 kernel hands its int8 output to, `edgetqs.runtimes.tflite_static`)."""
    import contextlib
    import io

    from ai_edge_quantizer import calibrator, qtyping, quantizer
    from ai_edge_quantizer.utils import qsv_utils

    qt = quantizer.Quantizer(fbuf)
    if everything:
        qt.add_static_config(
            regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=act_bits, weight_num_bits=8
        )
    for f in matched:
        p = f.precision
        if f.is_weight and p.kind == "int" and p.bits <= 8:  # the weight input; biases follow the kernel
            gran = qtyping.QuantGranularity.CHANNELWISE if p.granularity != "tensor" else qtyping.QuantGranularity.TENSORWISE
            for sc, op in f.weight_scopes:  # every consumer: the steps of an unrolled recurrent cell share one weight
                if WEIGHT_OPS.get(op) is None:
                    continue
                qt.add_static_config(
                    regex="^" + re.escape(sc) + "$",
                    operation_name=qtyping.TFLOperationName[op],
                    activation_num_bits=act_bits,
                    weight_num_bits=p.bits,
                    weight_granularity=gran,
                )
    for sc, op in activations:
        qt.add_static_config(
            regex="^" + re.escape(sc) + "$", operation_name=qtyping.TFLOperationName[op], activation_num_bits=act_bits, weight_num_bits=8
        )
    for sc in float_scopes:
        qt.update_quantization_recipe(
            regex="^" + re.escape(sc) + "$",
            operation_name=qtyping.TFLOperationName.ALL_SUPPORTED,
            op_config=qtyping.OpQuantizationConfig(compute_precision=qtyping.ComputePrecision.FLOAT, explicit_dequantize=False),
            algorithm_key="no_quantize",
        )
    if weight_only or dynamic:
        from .tflite import _recipe

        for f in matched:
            if f.is_weight and f.tensor in weight_only | dynamic:
                for sc, op in f.weight_scopes:
                    if WEIGHT_OPS.get(op) is not None:  # later entries win: this kernel computes in float / per call
                        _recipe(qt, sc, op, f.precision, dynamic=f.tensor in dynamic)
    data = []
    for r in rows:
        feed = {}
        for name, x in r.items():
            if name in keys:
                perm = in_perm[name]
                feed[keys[name]] = np.ascontiguousarray(x if perm is None else x.transpose(perm))
        data.append(feed)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):  # progress bars and a size summary
            cal = calibrator.Calibrator(fbuf, num_threads=1, qsv_update_func=qsv_utils.min_max_update)
            cal.calibrate({"serving_default": data}, qt._recipe_manager)
            qsvs = cal.get_model_qsvs()
            if range_margin != 1.0:  # calibrated ranges widened: a window the rollouts did not reach is not clipped
                qsvs = {k: _widened(v, range_margin) for k, v in qsvs.items()}
            return bytes(qt.quantize(qsvs).quantized_model)
    except (ValueError, KeyError, RuntimeError) as exc:  # the quantizer's policy refuses an op/config
        raise ConvertError(
            f"ai-edge-quantizer cannot quantize this graph to full integer with int{act_bits} activations: {str(exc)[:400]}"
        ) from None


def _widened(qsv: Any, margin: float) -> Any:
    """One tensor's calibrated min/max, times ``margin`` (other statistics as they are)."""
    if not isinstance(qsv, dict) or "min" not in qsv or "max" not in qsv:
        return qsv
    return {**qsv, "min": np.asarray(qsv["min"]) * margin, "max": np.asarray(qsv["max"]) * margin}


def _probe(path: Path, arena: int, n_inputs: int) -> tuple[bool, str]:
    r = subprocess.run([sys.executable, "-c", _PROBE, str(path), str(arena), str(n_inputs)], capture_output=True, text=True, timeout=120)
    return r.returncode == 0, r.stdout + r.stderr


def measure_arena(path: Path, n_inputs: int, ceiling: int = ARENA_CEILING) -> tuple[int, int | None, int]:
    """(smallest arena in bytes that loads and runs, what the recording allocator reports, probes run).

    Raises ConvertError when the model does not run in TFLM at all (an op without a kernel, a
    type the kernels reject), naming what the interpreter said.
    """
    ok, log = _probe(path, ceiling, n_inputs)
    if not ok:
        said = [ln.strip() for ln in log.splitlines() if ln.strip() and not ln.startswith(("Traceback", "  ", "[Recording"))]
        raise ConvertError(f"TFLite-Micro cannot run {path.name} even with a {ceiling // 2**20} MiB arena: " + " | ".join(said[-4:])[:500])
    m = re.search(r"Arena allocation total (\d+) bytes", log)
    reported = int(m.group(1)) if m else None
    probes = 1
    lo, hi = 0, ceiling  # lo fails (or is 0), hi runs
    if reported:  # start the bisection around the report
        ok, _ = _probe(path, reported, n_inputs)
        probes += 1
        if ok:
            hi = reported
        else:  # the report was short: double from it until a size runs, then bisect in between
            lo, step = reported, max(reported // 8, 1024)
            while lo + step < ceiling:
                ok, _ = _probe(path, lo + step, n_inputs)
                probes += 1
                if ok:
                    hi = lo + step
                    break
                lo, step = lo + step, step * 2
    while hi - lo > ARENA_ALIGN:
        mid = (lo + hi) // 2 // ARENA_ALIGN * ARENA_ALIGN
        if mid <= lo:
            break
        ok, _ = _probe(path, mid, n_inputs)
        probes += 1
        lo, hi = (lo, mid) if ok else (mid, hi)
    return hi, reported, probes


def _readback(buf: bytes, fm: Any, matched: list[Any]) -> tuple[dict[str, list[tuple[str, int]]], int, list[str]]:
    """Stored precision and bytes of each matched piece (by planned tensor; found by its tensor name in the
    float graph), all constant bytes, and the names of float tensors left (a full-integer model has none)."""
    fb = schema()
    _, types = names(fb)
    m = fb.ModelT.InitFromPackedBuf(buf, 0)
    sg = m.subgraphs[0]
    by_name: dict[str, int] = {}
    for idx, t in enumerate(sg.tensors):
        by_name.setdefault(t.name.decode(), idx)
    by_scope = {scope(sg, op): op for op in sg.operators}
    fsg = fm.subgraphs[0]
    out: dict[str, list[tuple[str, int]]] = {}
    for f in matched:
        at = by_name.get(fsg.tensors[f.index].name.decode())
        if at is None:
            out.setdefault(f.tensor, []).append(("missing", 0))
            continue
        t = sg.tensors[at]
        # the copies the quantizer made for other consumers (a bias shared by the steps of an unrolled cell)
        copies = {at} | {op.inputs[pos] for sc, _, pos in f.uses if (op := by_scope.get(sc)) is not None and pos < len(op.inputs)}
        nbytes = sum(
            (0 if (b := m.buffers[sg.tensors[i].buffer]).data is None else len(b.data)) + qbytes(sg.tensors[i]) for i in copies if i >= 0
        )
        kind = types.get(t.type, "?")
        if kind in ("INT8", "INT16", "INT4"):
            n = len(t.quantization.scale) if t.quantization is not None and t.quantization.scale is not None else 0
            out.setdefault(f.tensor, []).append((f"{kind.lower()}-{'tensor' if n == 1 else 'channel'}", nbytes))
        else:
            out.setdefault(f.tensor, []).append((kind.lower().replace("float", "fp"), nbytes))
    total, floats = 0, []
    for t in sg.tensors:
        b = m.buffers[t.buffer]
        if types.get(t.type) in ("FLOAT32", "FLOAT16"):
            floats.append(t.name.decode())
        if b.data is not None and len(b.data):
            total += len(b.data) + qbytes(t)
    return out, total, floats


def shared_copies(buf: bytes) -> tuple[int, int]:
    """(count, bytes) of the constants ai-edge-quantizer duplicated because their consumers need different
    quantization parameters (``*_duplicated*`` tensors: a bias shared by the steps of an unrolled cell)."""
    fb = schema()
    m = fb.ModelT.InitFromPackedBuf(buf, 0)
    n = nbytes = 0
    for t in m.subgraphs[0].tensors:
        b = m.buffers[t.buffer]
        if "_duplicated" in t.name.decode() and b.data is not None and len(b.data):
            n += 1
            nbytes += len(b.data) + qbytes(t)
    return n, nbytes


def _bits(precision: str) -> int:
    m = re.match(r"[a-z]+?(\d+)", precision)
    return int(m.group(1)) if m else 0


def activation_choices(job: ConvertJob, route: str) -> list[str]:
    """The activation widths to try, in order: the one asked for, else the plan's, else the target's preference."""
    allowed: list[str] = list(job.target.activations.get(route, ())) if job.target is not None else []
    allowed = allowed or (["int8"] if route == "tflm" else ["float"])
    if job.activations not in ("auto", None):
        if job.activations not in allowed:
            raise ConvertError(
                f"activations {job.activations} are not offered for {route} by target '{job.plan.target}' (it offers {', '.join(allowed)})"
            )
        return [job.activations]
    planned = getattr(job.plan, "activations", None)
    if planned:
        rest = [a for a in allowed if a != planned and _bits(a) < _bits(planned) and a != "float"]
        return [planned, *rest]  # a kernel that refuses the planned width falls back to narrower ones, with a note
    return allowed


@dataclass
class FloatGraph:
    """The float TFLite graph of a prepared model, with what static quantization needs to feed it."""

    prep: Any
    fbuf: bytes
    fm: Any
    matched: list[Any]
    keys: dict[str, str]
    in_perm: dict[str, Any]
    notes: list[str]

    def quantize(
        self,
        rows: list[dict[str, np.ndarray]],
        act: str,
        float_scopes: tuple[str, ...] = (),
        weight_only: frozenset[str] = frozenset(),
        dynamic: frozenset[str] = frozenset(),
        everything: bool = True,
        range_margin: float = 1.0,
        activations: tuple[tuple[str, str], ...] = (),
    ) -> bytes:
        return quantize_static(
            self.fbuf,
            self.matched,
            rows,
            _bits(act),
            self.in_perm,
            self.keys,
            float_scopes,
            weight_only,
            dynamic,
            everything,
            range_margin,
            activations,
        )


def float_graph(job: ConvertJob, route: str) -> FloatGraph:
    """The prepared model as a float TFLite graph with a signature, and the planned tensors found in it."""
    prep = job.prepared(route)
    model = prep.model
    fb = schema()
    ops, _ = names(fb)
    fbuf = signature_tflite(model, job.work, job.target)
    fm = fb.ModelT.InitFromPackedBuf(fbuf, 0)
    sg = fm.subgraphs[0]
    sig_in, _ = _signature(fm)
    in_names = [i.name for i in model.inputs]
    keys = _input_keys(in_names, sig_in)
    in_perm = input_perms(model, [tuple(sg.tensors[sig_in[keys[n]]].shape) for n in in_names])
    matched, _ = match_planned(prep, job.plan, fm, sg, ops, skip_fp32=False)
    rows = job.rows()
    notes = [
        f"calibrated with min/max on {len(rows)} inputs from the float model's closed-loop rollouts of {job.contexts.k} contexts x {job.horizon} steps",
        *prep.notes(),
    ]
    return FloatGraph(prep, fbuf, fm, matched, keys, in_perm, notes)


def tensor_checks(
    plan: Any,
    stored: dict[str, list[tuple[str, int]]],
    matched: list[Any],
    act: str,
    floats: list[str],
    float_ops: set[str] | None = None,
    int_kernels: frozenset[str] = frozenset(),
) -> list[TensorCheck]:
    """Per planned tensor, what the full-integer file stores: weights exactly at the planned form; biases and
    elementwise constants at the width their kernels need (int32/int64 biases, constants at the activation
    width); a tensor folded into another (a sum of two biases) is integer when no float tensor is left.

    ``float_ops`` (LiteRT, `tflite_static`): the scopes of ops that compute in float. A bias or constant read only by
    them may stay float32, unless one of its readers is the kernel of a weight in ``int_kernels``; a folded tensor is
    then not asked to be integer (LiteRT files keep float tensors)."""
    kinds: dict[str, list[Any]] = {}
    for f in matched:
        kinds.setdefault(f.tensor, []).append(f)
    int_scopes = {sc for f in matched if f.is_weight and f.tensor in int_kernels for sc, _ in f.weight_scopes}
    checks = []
    for t in plan.tensors:
        planned = t.precision
        got = stored.get(t.name)
        if not got:  # folded or transformed by the converter: full integer if no float tensor is left
            integer = not floats and float_ops is None
            found = "folded (integer)" if integer else "folded"
            checks.append(TensorCheck(name=t.name, planned=planned.name, found=found, match=integer or float_ops is not None, bytes=0))
            continue
        ok = True
        for (found, _), f in zip(got, kinds[t.name]):
            scopes = [sc for sc, _ in f.weight_scopes]
            if f.is_weight:
                ok &= found == f.precision.name  # a weight: exactly the planned integer form
            elif float_ops is not None and all(sc in float_ops for sc in scopes) and not any(sc in int_scopes for sc in scopes):
                ok &= found in ("fp32", "fp16") or (found.startswith("int") and _bits(found) >= _bits(act))  # read in float
            else:  # a bias or an elementwise constant: the width its kernel needs
                ok &= found.startswith("int") and _bits(found) >= min(planned.bits, _bits(act))
        names_ = [g for g, _ in got]
        label = names_[0] if len(set(names_)) == 1 else "+".join(names_)
        if len(got) > 1:
            label += f" ({len(got)} gate pieces)"
        checks.append(TensorCheck(name=t.name, planned=planned.name, found=label, match=ok, bytes=sum(b for _, b in got)))
    return checks


def convert_tflm(job: ConvertJob) -> Converted:
    """The full-integer artifact, its read-back, its measured arena and a host session on it."""
    require()
    quiet_tensorflow()
    from ..ondevice.runners import MicroRunner
    from .tflite_integers import against_plan, write_plan_integers

    plan, work, target = job.plan, job.work, job.target
    acts = activation_choices(job, "tflm")
    if "float" in acts:
        raise ConvertError("TFLite-Micro runs full-integer models only; activations must be int16 or int8")
    g = float_graph(job, "tflm")
    integers = job.plan_integers()  # GPTQ: written over the quantizer's round-to-nearest, the biases requantized to match
    notes = list(g.notes)
    artifact = work / job.file_name
    arena = reported = probes = None
    act = buf = None
    for i, a in enumerate(acts):
        try:
            buf = g.quantize(job.rows(), a)
            if integers is not None:
                buf = write_plan_integers(buf, g.fm, g.matched, integers, job.model, biases=True)
            artifact.write_bytes(buf)
            arena, reported, probes = measure_arena(artifact, len(job.model.inputs))
            act = a
            break
        except ConvertError as e:
            if i == len(acts) - 1:
                raise
            notes.append(f"{a} activations: {e}; falling back to {acts[i + 1]}")
    if arena is None or act is None or buf is None:  # pragma: no cover - the loop measured an arena or raised
        raise ConvertError("no activation type could be converted for TFLite-Micro")
    if act != getattr(plan, "activations", act):
        notes.append(
            f"the plan priced {plan.activations} activations; the artifact has {act}: replan with --activations {act} for exact bytes"
        )
    prep, fm, matched = g.prep, g.fm, g.matched
    model = prep.model
    in_order, out_order = io_order(buf, [i.name for i in model.inputs], [o.name for o in model.outputs])
    stored, total, floats = _readback(buf, fm, matched)
    dup_n, dup_bytes = shared_copies(buf)
    if dup_n:
        notes.append(
            f"the quantizer stored {dup_n} extra copies of constants shared by several kernels ({dup_bytes:,} bytes; the steps of an "
            "unrolled recurrent cell share biases whose scale differs per step after calibration): the plan does not price them"
        )
    checks = against_plan(buf, matched, integers, tensor_checks(plan, stored, matched, act, floats), plan.rounding)
    if integers is not None:
        notes.append(
            f"the weights' integers and scales are the plan's {plan.rounding} rounding, written over the quantizer's round-to-nearest; "
            "the kernels' int32/int64 biases requantized at input scale x the new weight scales"
        )
    if floats:
        raise ConvertError(f"the TFLite-Micro model still has float tensors ({', '.join(floats[:4])}); TFLM needs a full-integer model")
    if total > plan.budget_bytes:
        raise ConvertError(
            f"the TFLite-Micro model stores {total:,} weight bytes, over the flash budget of {plan.budget_bytes:,} bytes; "
            "replan with a smaller budget"
        )
    if target is not None and target.ram_budget_bytes and arena > target.ram_budget_bytes:
        raise ConvertError(
            f"the TFLite-Micro tensor arena needs {arena:,} bytes, over target '{target.name}''s RAM budget of {target.ram_budget_bytes:,} bytes"
        )
    notes.append(
        f"{act} activations, int8 weights; tensor arena measured by bisection in {probes} child processes: "
        f"{arena:,} bytes minimum, the recording allocator reports {reported if reported is None else f'{reported:,}'} bytes"
    )
    ins, outs = io_dicts(model)
    session = MicroRunner(str(artifact), ins, outs, arena_bytes=arena, order_in=in_order, order_out=out_order)
    facts = {
        "activations": act,
        "arena_bytes": arena,
        "arena_bytes_reported": reported,
        "ram_budget_bytes": None if target is None else target.ram_budget_bytes,
        "calibration_inputs": len(job.rows()),
        "tflm_inputs": in_order,
        "tflm_outputs": out_order,
        "prepared": prep.record(),
        "shared_bias_copies": {"tensors": dup_n, "bytes": dup_bytes},
    }
    return Converted(artifact, checks, total, session, notes=notes, facts=facts, versions=versions(_PACKAGES))


# ops whose TFLite-Micro kernels (or ai-edge-quantizer's int16x8 policy) have no int16 form, measured here
INT16_REFUSED = {"GATHER": "tflite-micro's GATHER has no int16 kernel (\"Type 'INT16' is not supported by gather\")"}


def float_graph_for_pricing(model: Any, route: str) -> tuple[Any, Any, dict[int, str]]:
    """(prepared model, float TFLite ModelT, op names) of the graph the converter will quantize (cached on disk)."""
    import tempfile

    from .prepare import prepare

    prep = prepare(model, route, measure=False)
    with tempfile.TemporaryDirectory(prefix="edgetqs-price-") as tmp:
        fbuf = signature_tflite(prep.model, Path(tmp))
    fb = schema()
    ops, _ = names(fb)
    return prep, fb.ModelT.InitFromPackedBuf(fbuf, 0), ops


def full_integer_pricing(rt: Any, model: Any, activations: str, exact: bool, auto: bool) -> Any:
    """Exact pricing from the float graph (tools installed), else the analytic estimate with a note; with ``auto``
    int16 activations narrow to int8 when the graph has an op without int16 kernels."""
    from ..errors import OptionalDependencyError
    from .litert import op_name
    from .pricing import analytic_pricing, tflite_pricing

    if not exact:
        return analytic_pricing(model, rt.name, activations, rt.storage)
    try:
        _require_light()
    except OptionalDependencyError as exc:
        p = analytic_pricing(model, rt.name, activations, rt.storage)
        p.notes.append(f"bytes estimated from the ONNX graph: {exc}")
        return p
    quiet_tensorflow()
    graph = float_graph_for_pricing(model, rt.name)
    notes = []
    if activations == "int16" and rt.name == "tflm":  # LiteRT has int16 kernels for these
        _, fm, ops = graph
        refused = sorted({n for op in fm.subgraphs[0].operators if (n := op_name(fm, op, ops)) in INT16_REFUSED})
        if refused and auto:
            notes.append(f"int8 activations: {INT16_REFUSED[refused[0]]}")
            activations = "int8"
        elif refused:
            raise ConvertError(f"int16 activations: {INT16_REFUSED[refused[0]]}; plan with --activations int8")
    p = tflite_pricing(model, rt.name, activations, rt.storage, graph)
    p.notes.extend(notes)
    return p


class TflmRuntime(RuntimeInfo):
    """TFLite-Micro: a full-integer TFLite model for microcontrollers, with its tensor arena measured."""

    def pricing(self, model: Any, activations: str, exact: bool = False, auto: bool = False) -> Any:
        return full_integer_pricing(self, model, activations, exact, auto)

    def convert(self, job: ConvertJob) -> Converted:
        return convert_tflm(job)

    def open(self, artifact: Path, model: Any, facts: dict[str, Any]) -> Any:
        from ..ondevice.runners import MicroRunner

        ins, outs = io_dicts(model)
        in_order, out_order = io_order(artifact.read_bytes(), [i["name"] for i in ins], [o["name"] for o in outs])
        arena = facts.get("arena_bytes") or measure_arena(artifact, len(ins))[0]
        return MicroRunner(str(artifact), ins, outs, arena_bytes=arena, order_in=in_order, order_out=out_order)

    def validate(self, artifact: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            return  # the device reports it; the host cannot parse TFLite without the extra
        Interpreter(model_content=artifact.read_bytes())

    def job(self, artifact: Path, io: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        in_order, out_order = io_order(artifact.read_bytes(), [i["name"] for i in io["inputs"]], [o["name"] for o in io["outputs"]])
        arena = facts.get("arena_bytes") or measure_arena(artifact, len(io["inputs"]))[0]
        return {"runner": self.runner, "arena_bytes": int(arena), "tflm_inputs": in_order, "tflm_outputs": out_order}

    def constant_states(self, artifact: Path, constants: dict[str, Any]) -> dict[str, str]:
        """A full-integer graph has no float tensors: its constants are integers like everything else."""
        return dict.fromkeys(constants, "integer")


RUNTIME = TflmRuntime(
    name="tflm",
    description="TFLite-Micro (full-integer int8 weights, int16/int8 activations, measured arena)",
    suffix=".tflm.tflite",
    accepts=("tflm",),
    storage=Storage(scale_bytes=12, wide_int_bytes=4, wide_int_overhead=12),
    extra="mcu",
    device_packages="tflite-micro",
    runner="tflite-micro",
    emulated=False,
    full_integer=True,
    activations=("int16", "int8"),
)
