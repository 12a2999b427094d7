"""TFLite artifacts: ONNX -> float TFLite (onnx2tf 1.28.8) -> ai-edge-quantizer recipe from the plan.

onnx2tf loses ONNX initializer names (tensors get TF op names) and may transform constants, so a
planned tensor is found in the float TFLite graph by content (its multiset of values: layouts are
permuted, values are not), and a planned tensor that cannot be found is an error, not a guess. The
recipe quantizes each matched weight weight-only (int8/int4, per tensor or per channel; fp16 by float
casting) through a regex on its consuming op's scope (the op's output tensor names). With ``--activations dynamic``
an int8 weight of a FULLY_CONNECTED or CONV_2D is quantized dynamic range instead (its op quantizes its input
per call and runs an integer GEMM: LiteRT's XNNPACK runs the station MLP at 0.22-0.28x ORT fp32 on the emulated
Pi 4/5, docs/latency.md), on the ops `edgetqs.allocation.activations` chooses. The result is read back from the
flatbuffer, because the interpreter reports INT4 as int8. A GPTQ plan's integers and scales are written over the
quantizer's round-to-nearest ones (`tflite_integers`). The float graph is cached on disk: the planner prices its
constants (plan bytes = artifact bytes) and convert quantizes the same file. ``--activations int8|int16`` writes a
graph with static int8 kernels, or a full-integer int16x8 graph, instead (`tflite_static`).
"""

from __future__ import annotations

import contextlib
import io
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..core.quantize import Storage, effective
from .base import Converted, ConvertError, ConvertJob, RuntimeInfo
from .convert import TensorCheck
from .litert import (
    WEIGHT_OPS,
    cached_float_tflite,
    graph_batch,
    io_dicts,
    match_planned,
    names,
    qbytes,
    quiet_tensorflow,
    require,
    schema,
    stored_bytes,
    versions,
)
from .tflite_integers import against_plan

_ALGO_FLOAT = "float_casting"
_PACKAGES = ("onnx2tf", "ai-edge-quantizer", "ai-edge-litert", "tensorflow")


def _match(prep: Any, plan: Any, m: Any, sg: Any, ops: dict[int, str]) -> list[Any]:
    """Planned (non-fp32) tensors, and each gate piece of a split recurrent weight, in the float TFLite graph."""
    found, missing = match_planned(prep, plan, m, sg, ops, skip_fp32=True)
    if missing:
        name, piece = missing[0]
        p = next(t.precision for t in plan.tensors if t.name == name)
        what = f"'{name}'" + (f" (its piece '{piece}')" if piece != name else "")
        raise ConvertError(
            f"planned tensor {what} ({p}) has no counterpart with the same values in the TFLite graph onnx2tf wrote "
            "(it was folded or transformed, e.g. a division turned into a multiplication); pin it to fp32 and replan"
        )
    for f in found:
        if not f.users or not f.only_weight_uses:
            raise ConvertError(
                f"planned tensor '{f.tensor}' ({f.precision}) feeds {f.op or 'nothing'} input {f.pos} in the TFLite graph; ai-edge-quantizer "
                f"quantizes only the weight input of {', '.join(sorted(WEIGHT_OPS))}: pin it to fp32 and replan"
            )
    return found


STATIC = ("int8", "int16")  # static activation modes (`edgetqs.runtimes.tflite_static`)
DYNAMIC_OPS = ("FULLY_CONNECTED", "CONV_2D")  # ops whose int8 weight can run dynamic range (XNNPACK's qd8 kernels)


def _recipe(qt: Any, op_scope: str, op: str, p: Any, dynamic: bool = False) -> None:
    from ai_edge_quantizer import qtyping

    regex = "^" + re.escape(op_scope) + "$"
    name = qtyping.TFLOperationName[op]
    if p.kind == "float":
        cfg = qtyping.OpQuantizationConfig(
            weight_tensor_config=qtyping.TensorQuantizationConfig(num_bits=16, dtype=qtyping.TensorDataType.FLOAT),
            compute_precision=qtyping.ComputePrecision.FLOAT,
            explicit_dequantize=True,
        )
        qt.update_quantization_recipe(regex=regex, operation_name=name, op_config=cfg, algorithm_key=_ALGO_FLOAT)
        return
    gran = {"tensor": qtyping.QuantGranularity.TENSORWISE, "channel": qtyping.QuantGranularity.CHANNELWISE}.get(p.granularity)
    if gran is None or p.bits not in (4, 8):
        raise ConvertError(f"precision {p.name} has no TFLite weight-only form here; use int8/int4 per tensor or per channel, or fp16")
    if dynamic and p.bits == 8:  # int8 weight, activations quantized per call (dynamic range): an integer GEMM
        qt.add_dynamic_config(regex=regex, operation_name=name, num_bits=8, granularity=gran)
        return
    qt.add_weight_only_config(regex=regex, operation_name=name, num_bits=p.bits, granularity=gran)


def _quantize(fbuf: bytes, matched: list[Any], dynamic: set[str], integers: Any = None) -> bytes:
    """The plan's recipe applied to the float TFLite: weight-only, or dynamic range for the weights in ``dynamic``.
    ``integers`` (`_Integers`): the plan's own rounding, written over the quantizer's round-to-nearest."""
    from ai_edge_quantizer import quantizer

    qt = quantizer.Quantizer(fbuf)
    for f in matched:
        for sc, op in f.weight_scopes:  # an unrolled recurrent cell's steps share one weight
            _recipe(qt, sc, op, f.precision, dynamic=f.tensor in dynamic)
    with contextlib.redirect_stdout(io.StringIO()):  # the quantizer prints a size summary
        buf = bytes(qt.quantize().quantized_model)
    if integers is None:
        return buf
    from .tflite_integers import write_plan_integers

    return write_plan_integers(buf, integers.float_model, matched, integers.values, integers.source)


@dataclass(frozen=True)
class _Integers:
    """A GPTQ plan's integers (tensor name -> `QuantizedTensor`, source layout) and where to write them from."""

    values: dict[str, Any]
    float_model: Any  # the float TFLite ModelT the weights were matched in
    source: Any  # the Model the plan was made for


@dataclass(frozen=True)
class _Graph:
    """A float TFLite graph to quantize: its bytes, the planned tensors matched in it, the plan's integers, and the
    windows centred in it (`edgetqs.runtimes.centring`; empty for the prepared graph itself)."""

    fbuf: bytes
    matched: list[Any]
    integers: _Integers | None
    centred: tuple[Any, ...] = ()

    def quantize(self, dynamic: set[str]) -> bytes:
        return _quantize(self.fbuf, self.matched, dynamic, self.integers) if self.matched else self.fbuf


def _graph(job: ConvertJob, prep: Any, centred: tuple[Any, ...] = ()) -> _Graph:
    fb = schema()
    ops, _ = names(fb)
    fbuf = cached_float_tflite(prep.model, job.work, job.target)  # the planner priced from this graph
    fm = fb.ModelT.InitFromPackedBuf(fbuf, 0)
    matched = _match(prep, job.plan, fm, fm.subgraphs[0], ops)
    plan_ints = job.plan_integers()  # GPTQ: written over the quantizer's round-to-nearest (tflite_integers)
    return _Graph(fbuf, matched, None if plan_ints is None else _Integers(plan_ints, fm, job.model), centred)


def _able(matched: list[Any]) -> set[str]:
    """The planned int8 weights whose ops can run dynamic range."""
    return {
        f.tensor
        for f in matched
        if f.precision.kind == "int" and f.precision.bits == 8 and all(op in DYNAMIC_OPS for _, op in f.weight_scopes)
    }


def _window_steps(job: ConvertJob) -> int | None:
    """The steps of a window model's [B, L, C] window (None: a state model, a univariate or symbolic window)."""
    spec = job.spec
    if spec.mode != "window" or spec.window_form not in ("steps", "one-step") or not spec.pairs:
        return None
    shape = next((i.shape for i in job.model.inputs if i.name == spec.pairs[0][0]), None)
    return int(shape[1]) if shape is not None and len(shape) == 3 and isinstance(shape[1], int) else None


class _Variants:
    """The float graphs a dynamic-range trial is built from: the prepared one, and the prepared one with the windows of
    some layers centred (`edgetqs.runtimes.centring`; one onnx2tf conversion per set, made when a trial asks)."""

    def __init__(self, job: ConvertJob, prep: Any, plain: _Graph) -> None:
        from .centring import sites

        self.job, self.prep, self.plain = job, prep, plain
        steps = _window_steps(job)
        found = [] if steps is None else sites(prep.model.proto, steps, _able(plain.matched))
        self.sites = {s.weight: s for s in found if s.weight in prep.source_weights}
        self._made: dict[frozenset[str], _Graph] = {frozenset(): plain}
        self._values: dict[str, np.ndarray] | None = None

    def extra_bytes(self, weight: str) -> int:
        """What centring ``weight``'s window adds to the file: its level weight and the constants onnx2tf writes for
        the new ops, measured on the two float graphs."""
        fb = schema()
        plain, centred = (fb.ModelT.InitFromPackedBuf(g.fbuf, 0) for g in (self.plain, self.graph({weight})))
        return stored_bytes(centred) - stored_bytes(plain)

    def graph(self, centred: set[str]) -> _Graph:
        key = frozenset(centred & set(self.sites))
        if key not in self._made:
            from dataclasses import replace

            from ..allocation.rounding import dequantized
            from ..core.model import Model
            from .centring import centre

            if self._values is None:  # the level weights are summed from what the plan computes with (its rounding)
                self._values = dequantized(self.job.model, self.job.plan, self.job.contexts, self.job.spec)
            proto, done = centre(self.prep.model.proto, [self.sites[w] for w in sorted(key)], self._values)
            src = self.prep.model
            model = Model(proto, src.path, min_weight_size=1, include=src.include, exclude=src.exclude)
            model.name = src.name
            self._made[key] = _graph(self.job, replace(self.prep, model=model), tuple(done))
        return self._made[key]


def _choose_dynamic(job: ConvertJob, variants: _Variants) -> tuple[set[str], Any, _Graph, list[str]]:
    """Which int8 weights' ops run dynamic range: `edgetqs.allocation.activations.choose_activations` with the rungs
    dynamic -> float, each trial quantized and rolled out in LiteRT on the host. A dense layer over a flattened window
    gets dynamic -> centred -> float (`edgetqs.runtimes.centring`) when the budget has room for its level weight; a
    trial with it centred is built from the centred graph. Returns (dynamic weights, choice, graph, notes)."""
    from ..allocation.activations import kernel_groups
    from ..ondevice.runners import LiteRunner

    plain = variants.plain
    notes: list[str] = []
    # the scores perturb the model as given (the TFLite route's prepared copy is fixed at batch 1; weight names agree)
    groups = kernel_groups(job.model.proto, _able(plain.matched))
    room = job.plan.budget_bytes - job.plan.weight_bytes
    need: dict[str, int] = {}
    for gr in groups:
        if gr["weight"] in variants.sites:
            try:
                need[gr["op"]] = variants.extra_bytes(gr["weight"])
            except Exception as exc:  # noqa: BLE001 - the rung is an option: without it the layer keeps dynamic -> float
                notes.append(
                    f"{gr['op']} reads a flattened window, but its centred graph could not be made ({str(exc)[:200]}); not offered"
                )
    short = []  # layers whose level weight the budget has no room for
    for gr in groups:
        if gr["op"] in need and need[gr["op"]] <= room:
            gr["rungs"] = ("dynamic", "centred", "float")
            room -= need[gr["op"]]
        elif gr["op"] in need:
            short.append(gr["op"])
    weight = {gr["op"]: gr["weight"] for gr in groups}

    def split(modes: dict[str, str]) -> tuple[set[str], set[str]]:
        centred = {weight[op] for op, m in modes.items() if m == "centred"}
        return {weight[op] for op, m in modes.items() if m == "dynamic"} | centred, centred

    def build(modes: dict[str, str]) -> bytes:
        dynamic, centred = split(modes)
        return variants.graph(centred).quantize(dynamic)

    ins, outs = io_dicts(job.model)
    choice = choose_on_litert(job, groups, build, lambda data: LiteRunner(data, ins, outs), ("dynamic", "float"))
    short = [op for op in short if choice.modes.get(op) == "float"]  # a layer that runs dynamic as it is needs no room
    if short:
        notes.append(
            f"{', '.join(short)} read(s) a flattened window and stay(s) float: centring it for dynamic range stores "
            f"{sum(need[o] for o in short):,} B more (a level weight), and the plan leaves {room:,} B of its budget unspent; "
            f"to let TQS try it, plan with --reserve {sum(need.values())} (the same budget, that much less for the weights) "
            f"or with --budget {job.plan.weight_bytes + sum(need.values())} (this plan's weights, with room beside them)"
        )
    dynamic, centred = split(choice.modes)
    return dynamic, choice, variants.graph(centred), notes


def choose_on_litert(
    job: ConvertJob,
    groups: list[dict[str, Any]],
    build: Callable[[dict[str, str]], bytes],
    session: Callable[[bytes], Any],
    rungs: tuple[str, ...],
) -> Any:
    """`edgetqs.allocation.activations.choose_activations` for a LiteRT artifact: the job's model, contexts and the
    target's check settings, each trial built by ``build`` and rolled out in ``session`` on the conversion's contexts
    and on the ones the check draws."""
    from ..allocation.activations import choose_activations

    steps, tol = job.check_settings()
    return choose_activations(
        job.model,
        job.spec,
        job.contexts,
        b"",
        job.model.proto,
        job.rows(),
        steps,
        tol,
        goal=job.activation_goal,
        build=build,
        groups=groups,
        session=session,
        rungs=rungs,
        dynamic_ops=("MatMul", "Gemm", "Conv"),
        also=job.check_contexts(steps),
    )


def _readback(buf: bytes, matched: list[Any]) -> tuple[dict[str, list[tuple[str, int]]], int]:
    """Stored precision and bytes of each matched piece (by planned tensor), and all weight bytes of the file."""
    from .tflite_integers import weight_locator

    fb = schema()
    ops, types = names(fb)
    m = fb.ModelT.InitFromPackedBuf(buf, 0)
    sg = m.subgraphs[0]
    locate = weight_locator(m, ops)
    out: dict[str, list[tuple[str, int]]] = {}
    for f in matched:
        at = locate(f)
        if at is None:
            out.setdefault(f.tensor, []).append(("missing", 0))
            continue
        src = sg.tensors[at]
        b = m.buffers[src.buffer]
        nbytes = (0 if b.data is None else len(b.data)) + qbytes(src)
        kind = types.get(src.type, "?")
        if kind in ("INT8", "INT4"):
            n = len(src.quantization.scale) if src.quantization is not None and src.quantization.scale is not None else 0
            found = f"int{8 if kind == 'INT8' else 4}-{'tensor' if n == 1 else 'channel'}"
        elif kind == "FLOAT16":
            found = "fp16"
        elif kind == "FLOAT32":
            found = "fp32"
        else:
            found = kind.lower()
        out.setdefault(f.tensor, []).append((found, nbytes))
    return out, stored_bytes(m)


class TfliteRuntime(RuntimeInfo):
    """LiteRT (TFLite): onnx2tf's float graph with ai-edge-quantizer's recipe from the plan: weight-only, or with
    ``--activations dynamic`` dynamic range (int8 weight, activations quantized per call: XNNPACK's integer kernels)
    on the ops where TQS finds the rollout allows it."""

    def convert(self, job: ConvertJob) -> Converted:
        require(
            "tflite",
            "converting to TFLite",
            (("onnx2tf", "onnx2tf"), ("ai_edge_quantizer", "ai-edge-quantizer"), ("ai_edge_litert", "ai-edge-litert")),
        )
        quiet_tensorflow()
        from ..ondevice.runners import LiteRunner

        model, plan, work = job.model, job.plan, job.work
        acts = job.activation_mode("tflite")
        if acts in STATIC:  # static int8 kernels, or full integer int16, with the rungs TQS chooses
            from .tflite_static import convert_static

            return convert_static(job, acts)
        prep = job.prepared("tflite")
        graph = _graph(job, prep)
        matched, integers = graph.matched, graph.integers
        facts: dict[str, Any] = {"prepared": prep.record(), "activations": acts, "rounding": plan.rounding}
        extra: list[str] = []
        dynamic: set[str] = set()
        if acts == "dynamic" and matched:
            dynamic, choice, graph, centring_notes = _choose_dynamic(job, _Variants(job, prep, graph))
            facts["activation_choice"] = choice.model_dump(mode="json")
            facts["dynamic_weights"] = sorted(dynamic)
            extra += [choice.summary(), *centring_notes]
            if not dynamic:
                facts["activations"] = "float"
            if graph.centred:
                facts["centred"] = [c.to_dict() for c in graph.centred]
                extra += [
                    f"{c.node}: its input window centred on the last of its {c.steps} steps before dynamic range, the "
                    f"{c.variables} variables' levels added back through a float weight of {c.level_bytes:,} B summed from the planned one"
                    for c in graph.centred
                ]
            matched, integers = graph.matched, graph.integers
        buf = graph.quantize(dynamic)
        artifact = work / job.file_name
        artifact.write_bytes(buf)
        stored, total = _readback(buf, matched)
        want: dict[str, list[str]] = {f.tensor: [] for f in matched}
        for f in matched:
            want[f.tensor].append(f.precision.name)
        checks = []
        for t in plan.tensors:
            p = effective(t.precision, model.weight_array(t.name).shape, model.layout(t.name))
            if t.name in stored:
                got = stored[t.name]
                found = got[0][0] if len({g for g, _ in got}) == 1 else "+".join(g for g, _ in got)
                nbytes = sum(b for _, b in got)
                ok = [g for g, _ in got] == want[t.name]
                label = found if len(got) == 1 else f"{found} ({len(got)} gate pieces)"
                checks.append(TensorCheck(name=t.name, planned=p.name, found=label, match=ok, bytes=nbytes))
            else:  # planned fp32: stays float in the graph onnx2tf wrote (possibly transformed or fused)
                checks.append(TensorCheck(name=t.name, planned=p.name, found="fp32", match=p.name == "fp32", bytes=t.bytes))
        checks = against_plan(buf, matched, None if integers is None else integers.values, checks, plan.rounding)
        shutil.rmtree(work / "onnx2tf", ignore_errors=True)
        (work / "float_input.onnx").unlink(missing_ok=True)
        ins, outs = io_dicts(model)
        notes = [
            f"float TFLite from onnx2tf at batch {graph_batch(prep.model)}; {len(matched)} tensors quantized by ai-edge-quantizer, "
            f"{len(dynamic)} of them dynamic range (int8 activations quantized per call), the others weight-only",
            *(
                []
                if integers is None
                else [f"the integers and scales are the plan's {plan.rounding} rounding, written over the quantizer's round-to-nearest"]
            ),
            *extra,
            *prep.notes(),
        ]
        return Converted(artifact, checks, total, LiteRunner(buf, ins, outs), notes=notes, facts=facts, versions=versions(_PACKAGES))

    def open(self, artifact: Path, model: Any, facts: dict[str, Any]) -> Any:
        from ..ondevice.runners import LiteRunner

        ins, outs = io_dicts(model)
        return LiteRunner(str(artifact), ins, outs, order_in=facts.get("tflite_inputs"), order_out=facts.get("tflite_outputs"))

    def validate(self, artifact: Path) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:
            return  # the device reports it; the host cannot parse TFLite without the extra
        Interpreter(model_content=artifact.read_bytes())

    def job(self, artifact: Path, io: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        # a static-activation file was converted through TensorFlow: its inputs are found through its signature
        order = {k: facts[k] for k in ("tflite_inputs", "tflite_outputs") if facts.get(k)}
        return {"runner": self.runner, **order}

    def pricing(self, model: Any, activations: str, exact: bool = False, auto: bool = False) -> Any:
        """`storage` prices per weight. Everything else is fixed bytes: with ``exact`` (and the TFLite tools installed)
        those of the float TFLite graph onnx2tf writes (cached; convert quantizes that same graph), else the constants
        of the legalised ONNX graph, which misses what onnx2tf adds (layout permutations, shape vectors: 52 B on
        Lorenz-96, which made a plan at ratio 1.0 too small for its own fp32 artifact)."""
        import importlib.util
        import tempfile

        from .prepare import prepare, prepared_fixed_bytes
        from .pricing import storage_pricing

        if activations in STATIC:  # priced from the graph tflite_static quantizes (the TFLite-Micro route's float graph)
            from .tflm import full_integer_pricing

            fi = full_integer_pricing(self, model, activations, exact, auto)
            fi.float_kernels = True  # LiteRT runs float kernels and float ops: priced as an upper bound
            return fi
        p = storage_pricing(self.name, self.storage, activations)
        missing = [
            pkg for mod, pkg in (("onnx2tf", "onnx2tf"), ("ai_edge_litert", "ai-edge-litert")) if importlib.util.find_spec(mod) is None
        ]
        if not exact or missing:
            p.fixed = prepared_fixed_bytes(model, "tflite")
            if exact:
                p.notes.append(f"bytes beside the weights estimated from the ONNX graph: {', '.join(missing)} not installed")
            return p
        try:
            quiet_tensorflow()
            prep = prepare(model, "tflite", measure=False)
            with tempfile.TemporaryDirectory(prefix="edgetqs-price-") as tmp:
                buf = cached_float_tflite(prep.model, Path(tmp))
        except Exception as exc:  # noqa: BLE001 - onnx2tf failing or timing out: convert names the cause; the plan prices the ONNX graph meanwhile
            p.fixed = prepared_fixed_bytes(model, "tflite")
            p.notes.append(f"bytes beside the weights estimated from the ONNX graph: {str(exc)[:200]}")
            return p
        # every weight is stored once as float32 in the float graph (layouts permuted, values kept): the rest is fixed
        floats = sum(4 * w.size for w in model.weights)
        p.fixed = stored_bytes(schema().ModelT.InitFromPackedBuf(buf, 0)) - floats
        p.exact = True
        p.source = "packed bytes per weight, and the other constants of the float TFLite graph onnx2tf writes"
        return p

    def constant_states(self, artifact: Path, constants: dict[str, Any]) -> dict[str, str]:
        """onnx2tf renames constants: each is looked for by content among the file's float32 buffers (the
        quantizer's recipe names only planned weights, so a constant onnx2tf kept is still float32). In a full-integer
        graph (integer inputs) a constant not found in float is an integer like its neighbours."""
        fb = schema()
        _, types = names(fb)
        m = fb.ModelT.InitFromPackedBuf(artifact.read_bytes(), 0)
        from . import litert

        sg = m.subgraphs[0]
        full_integer = any(types.get(sg.tensors[i].type) in ("INT8", "INT16") for i in sg.inputs)
        pool = [np.sort(vals) for _, vals in litert.constants(m, sg)]
        out = {}
        for name, want in constants.items():
            key = np.sort(np.asarray(want, np.float32).ravel())
            hit = any(v.size == key.size and np.array_equal(v, key) for v in pool)
            out[name] = "exact" if hit else ("integer" if full_integer else "folded")
        return out


RUNTIME = TfliteRuntime(
    name="tflite",
    description="LiteRT / TFLite (weight-only int8/int4 per tensor or channel, fp16; dynamic range, static int8 kernels or full-integer int16)",
    suffix=".tflite",
    accepts=("tflite",),
    storage=Storage(scale_bytes=12, wide_int_bytes=4, wide_int_overhead=12),
    extra="tflite",
    device_packages="ai-edge-litert (or tflite-runtime)",
    runner="litert",
    integer_activations=True,
    activations=("float", "dynamic", "int8", "int16"),
)
