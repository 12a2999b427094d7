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
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quantize import Storage
from ..core.rollout import closed_loop_inputs
from .base import Converted, ConvertError, ConvertJob, RuntimeInfo
from .convert import TensorCheck
from .litert import (
    WEIGHT_OPS,
    constants,
    float_tflite,
    input_perms,
    io_dicts,
    names,
    op_name,
    qbytes,
    quiet_tensorflow,
    refuse_other_rounding,
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


def signature_tflite(model: Any, work: Path) -> bytes:
    """Float TFLite with a ``serving_default`` signature, from the SavedModel onnx2tf writes."""
    float_tflite(model, work)
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


def _quantize(
    fbuf: bytes,
    model: Any,
    plan: Any,
    matched: dict[str, tuple[str, str, int]],
    rows: list[dict[str, np.ndarray]],
    act_bits: int,
    in_perm: dict[str, Any],
    keys: dict[str, str],
) -> bytes:
    import contextlib
    import io

    from ai_edge_quantizer import calibrator, qtyping, quantizer
    from ai_edge_quantizer.utils import qsv_utils

    qt = quantizer.Quantizer(fbuf)
    qt.add_static_config(regex=".*", operation_name=qtyping.TFLOperationName.ALL_SUPPORTED, activation_num_bits=act_bits, weight_num_bits=8)
    for tname, (op_scope, op, pos) in matched.items():
        p = next(t.precision for t in plan.tensors if t.name == tname)
        if WEIGHT_OPS.get(op) == pos and p.kind == "int":  # the weight input; biases follow the kernel
            gran = qtyping.QuantGranularity.CHANNELWISE if p.granularity != "tensor" else qtyping.QuantGranularity.TENSORWISE
            qt.add_static_config(
                regex="^" + re.escape(op_scope) + "$",
                operation_name=qtyping.TFLOperationName[op],
                activation_num_bits=act_bits,
                weight_num_bits=p.bits,
                weight_granularity=gran,
            )
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
            return bytes(qt.quantize(cal.get_model_qsvs()).quantized_model)
    except (ValueError, KeyError, RuntimeError) as exc:  # the quantizer's policy refuses an op/config
        raise ConvertError(
            f"ai-edge-quantizer cannot quantize this graph to full integer with int{act_bits} activations: {str(exc)[:400]}"
        ) from None


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


def _readback(buf: bytes, tfl_names: dict[str, str]) -> tuple[dict[str, tuple[str, int]], int, list[str]]:
    """Stored precision and bytes of each planned tensor (by its tensor name in the float graph),
    all constant bytes, and the names of float tensors left (a full-integer model has none)."""
    fb = schema()
    _, types = names(fb)
    m = fb.ModelT.InitFromPackedBuf(buf, 0)
    sg = m.subgraphs[0]
    by_name: dict[str, int] = {}
    for idx, t in enumerate(sg.tensors):
        by_name.setdefault(t.name.decode(), idx)

    out: dict[str, tuple[str, int]] = {}
    for plan_name, tfl_name in tfl_names.items():
        at = by_name.get(tfl_name)
        if at is None:
            out[plan_name] = ("missing", 0)
            continue
        t = sg.tensors[at]
        b = m.buffers[t.buffer]
        nbytes = (0 if b.data is None else len(b.data)) + qbytes(t)
        kind = types.get(t.type, "?")
        if kind in ("INT8", "INT16", "INT4"):
            n = len(t.quantization.scale) if t.quantization is not None and t.quantization.scale is not None else 0
            out[plan_name] = (f"{kind.lower()}-{'tensor' if n == 1 else 'channel'}", nbytes)
        else:
            out[plan_name] = (kind.lower().replace("float", "fp"), nbytes)
    total, floats = 0, []
    for t in sg.tensors:
        b = m.buffers[t.buffer]
        if types.get(t.type) in ("FLOAT32", "FLOAT16"):
            floats.append(t.name.decode())
        if b.data is not None and len(b.data):
            total += len(b.data) + qbytes(t)
    return out, total, floats


def _bits(precision: str) -> int:
    m = re.match(r"[a-z]+?(\d+)", precision)
    return int(m.group(1)) if m else 0


def _match_constants(
    model: Any, plan: Any, fm: Any, sg: Any, ops: dict[int, str]
) -> tuple[dict[str, tuple[str, str, int]], dict[str, str]]:
    """Planned tensors found by content in the float graph: (name -> (op scope, op, input position), name -> TFLite tensor name).

    As for TFLite; in a full-integer graph every constant is quantized, so one that onnx2tf folded or
    transformed (1/std for a division) is quantized in its new form and simply not found here."""
    consts = constants(fm, sg)
    consumers: dict[int, list[Any]] = {}
    for op in sg.operators:
        for pos, i in enumerate(op.inputs):
            if i >= 0:
                consumers.setdefault(i, []).append((op, pos))
    matched: dict[str, tuple[str, str, int]] = {}
    tensor_names: dict[str, str] = {}
    used: set[int] = set()
    for t in plan.tensors:
        w = np.sort(model.weight_array(t.name).astype(np.float32).ravel())
        cands = [
            idx for idx, vals in consts if idx not in used and vals.size == w.size and np.allclose(np.sort(vals), w, rtol=1e-6, atol=1e-8)
        ]
        if not cands:
            continue
        idx = cands[0]
        used.add(idx)
        tensor_names[t.name] = sg.tensors[idx].name.decode()
        users = consumers.get(idx, [])
        if users:
            op, pos = users[0]
            matched[t.name] = (scope(sg, op), op_name(fm, op, ops), pos)
    return matched, tensor_names


def convert_tflm(job: ConvertJob) -> Converted:
    """The full-integer artifact, its read-back, its measured arena and a host session on it."""
    require()
    quiet_tensorflow()
    refuse_other_rounding(job)
    from ..ondevice.runners import MicroRunner

    model, plan, work, contexts, spec, horizon, target, activations = (
        job.model,
        job.plan,
        job.work,
        job.contexts,
        job.spec,
        job.horizon,
        job.target,
        job.activations,
    )
    fb = schema()
    ops, _ = names(fb)
    fbuf = signature_tflite(model, work)
    fm = fb.ModelT.InitFromPackedBuf(fbuf, 0)
    sg = fm.subgraphs[0]
    sig_in, _ = _signature(fm)
    in_names, out_names = [i.name for i in model.inputs], [o.name for o in model.outputs]
    keys = _input_keys(in_names, sig_in)
    in_perm = input_perms(model, [tuple(sg.tensors[sig_in[keys[n]]].shape) for n in in_names])

    matched, tensor_names = _match_constants(model, plan, fm, sg, ops)

    allowed = list(target.activations.get("tflm", ["int8"])) if target is not None else ["int8"]
    if activations != "auto":
        if activations not in allowed:
            raise ConvertError(f"activations {activations} are not allowed by target '{plan.target}' (allowed: {', '.join(allowed)})")
        allowed = [activations]
    rows = closed_loop_inputs(model, spec, contexts, horizon)
    notes = [
        f"calibrated with min/max on {len(rows)} inputs from the float model's closed-loop rollouts of {contexts.k} contexts x {horizon} steps"
    ]
    artifact = work / job.file_name
    arena = reported = probes = None
    act = None
    for i, act in enumerate(allowed):
        bits = _bits(act)
        buf = _quantize(fbuf, model, plan, matched, rows, bits, in_perm, keys)
        artifact.write_bytes(buf)
        try:
            arena, reported, probes = measure_arena(artifact, len(model.inputs))
            break
        except ConvertError as e:
            if i == len(allowed) - 1:
                raise
            notes.append(f"{act} activations: {e}; falling back to {allowed[i + 1]}")
    in_order, out_order = io_order(buf, in_names, out_names)

    stored, total, floats = _readback(buf, tensor_names)
    if arena is None or act is None:  # pragma: no cover - the loop above either measured an arena or raised
        raise ConvertError("no activation type could be converted for TFLite-Micro")
    checks = []
    for t in plan.tensors:
        planned = t.precision
        if t.name not in stored:  # folded or transformed by onnx2tf: full integer if no float tensor is left
            checks.append(
                TensorCheck(
                    name=t.name, planned=planned.name, found="folded (integer)" if not floats else "folded", match=not floats, bytes=0
                )
            )
            continue
        found, nbytes = stored[t.name]
        kind = matched.get(t.name, ("", "", -1))[1]
        if kind in WEIGHT_OPS and matched[t.name][2] == WEIGHT_OPS[kind]:
            ok = found == planned.name  # a weight: exactly the planned int8 form
        else:  # a bias or an elementwise constant: quantized at the width the kernels need (int32/int64 bias;
            # elementwise constants at the activation width, so int8 when activations fell back to int8)
            ok = found.startswith("int") and _bits(found) >= min(planned.bits, _bits(act))
        checks.append(TensorCheck(name=t.name, planned=planned.name, found=found, match=ok, bytes=nbytes))
    if floats:
        raise ConvertError(f"the TFLite-Micro model still has float tensors ({', '.join(floats[:4])}); TFLM needs a full-integer model")
    file_bytes = len(buf)
    if file_bytes > plan.budget_bytes:
        raise ConvertError(
            f"the TFLite-Micro model is {file_bytes:,} bytes, over the flash budget of {plan.budget_bytes:,} bytes; replan with a smaller budget"
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
        "calibration_inputs": len(rows),
        "tflm_inputs": in_order,
        "tflm_outputs": out_order,
    }
    return Converted(artifact, checks, total, session, notes=notes, facts=facts, versions=versions(_PACKAGES))


class TflmRuntime(RuntimeInfo):
    """TFLite-Micro: a full-integer TFLite model for microcontrollers, with its tensor arena measured."""

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
)
