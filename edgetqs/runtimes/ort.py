"""ONNX Runtime artifacts: weight-only mixed precision written into the ONNX graph by hand.

Per planned tensor (TOOLCHAIN.md says what onnxruntime 1.32 runs):
- fp32: untouched; fp16: an fp16 initializer and a ``Cast`` to float that outputs the original name;
- int8 / int4: integer initializer + float32 scale + ``DequantizeLinear`` (per tensor: scalar scale;
  per channel: ``axis``; blocked: ``block_size``, opset 21) that outputs the original name.
For ORT-mobile (``.ort``) onnxruntime refuses INT4 initializers, so 4-bit weights go through the
``com.microsoft.MatMulNBits`` kernel instead (Gemm is rewritten to MatMulNBits + Add first, since
nothing else handles Gemm), and the ``.ort`` file is written by onnxruntime's converter with its
optimiser disabled (the default level folds fp16 Casts back into fp32 weights).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ..core.model import Model
from ..core.quantize import Layout, Precision, QuantizedTensor, effective, quantize_int
from .base import Converted, ConvertError, ConvertJob, RuntimeInfo

if TYPE_CHECKING:  # pragma: no cover
    from ..allocation.plan import Plan
    from ..allocation.targets import Target

NBITS_SUFFIX = "__nbits"
OPSET = 21
# The size rule for MatMulNBits with accuracy_level 4 (int8 compute), by target arch: the smallest K at which it
# ran faster than the float Gemm in scripts/bench_ort_kernels.py (onnxruntime 1.32, one thread, batch 1, layers of
# K x K). x86_64 (this project's AVX2 host): 0.7-0.8x fp32 at K=512, break-even at 256, 1.0-1.4x at 48-128.
# aarch64 (qemu-aarch64 -cpu cortex-a72, the emulated Pi 4): 1.6-4.3x SLOWER than fp32 at every K from 48 to 1024
# (the A72 has no int8 dot product); a raspberrypi target covers the Pi 4 too: never. See docs/notes/issue-14-speed.md.
NBITS_MIN_K: dict[str, int | None] = {"x86_64": 512, "aarch64": None}


def _int_initializer(q: np.ndarray, bits: int, name: str) -> Any:
    """Packed raw storage: int8 one byte each, int4 two to a byte (a list of values would be stored
    as varints in int32_data, several times larger)."""
    import ml_dtypes
    from onnx import numpy_helper

    return numpy_helper.from_array(q.astype(ml_dtypes.int4) if bits == 4 else q.astype(np.int8), name)


def nbits_min_k(target: Target | None) -> int | None:
    """The smallest reduction size K at which MatMulNBits (accuracy_level 4) is used on ``target``'s CPU: None
    when it was never measured faster there (`NBITS_MIN_K`, by the target's ``arch``)."""
    return NBITS_MIN_K.get(target.arch) if target is not None else None


def qdq_model(
    model: Model,
    plan: Plan,
    mobile: bool = False,
    integers: dict[str, QuantizedTensor] | None = None,
    min_k: int | None = None,
) -> tuple[bytes, dict[str, str], dict[str, str]]:
    """The float model rewritten with the plan's precisions.

    Args:
        model: the float model (canonical graph).
        plan: per tensor precision.
        mobile: ORT-mobile: 4-bit weights always go through MatMulNBits (``.ort`` refuses INT4 initializers).
        integers: tensor name -> the integers and scales to store (e.g. GPTQ's); default: round-to-nearest.
        min_k: route an int8/int4 2-D MatMul/Gemm weight with K >= ``min_k`` through MatMulNBits with
            accuracy_level 4 (int8 compute) when its planned layout maps to whole blocks (`nbits_block`);
            None: never (DequantizeLinear feeding the float op).

    Returns:
        (ONNX bytes, planned tensor name -> MatMulNBits weight initializer name, planned integer tensor name ->
        the kernel that runs it and why, for convert.json).

    Raises:
        ConvertError: a planned tensor the model lacks, a precision the runtime cannot store, or a
            4-bit weight whose op has no 4-bit kernel in ORT-mobile.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper, version_converter

    proto = onnx.ModelProto()
    proto.CopyFrom(model.proto)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    names = {w.name for w in model.weights}
    stored = [effective(t.precision, model.weight_array(t.name).shape, model.layout(t.name)) for t in plan.tensors if t.name in names]
    needs = any(p.kind == "int" and not p.stays_float and (p.bits == 4 or p.granularity == "block") for p in stored)
    needs_qdq = any(p.kind == "int" and not p.stays_float for p in stored)
    if opset < (OPSET if needs else 13 if needs_qdq else 0):
        # int4 and blocked DequantizeLinear need opset 21, per-axis int8 opset 13; a plan that needs neither keeps
        # the model's opset (raising it adds shape annotations: 5 % of a small model's file)
        want = OPSET if needs else 13
        try:
            raised = version_converter.convert_version(proto, want)
        except Exception as exc:  # noqa: BLE001 - the converter raises bare RuntimeErrors naming the op
            raise ConvertError(f"cannot raise the model from opset {opset} to {want} for its quantized weights: {exc}") from None
        del raised.graph.value_info[:]  # the converter's shape inference results: not part of the model
        raised.graph.value_info.extend(proto.graph.value_info)
        proto = raised
    if needs:
        proto.ir_version = max(proto.ir_version, 10)  # int4 initializers
    graph = proto.graph
    inits = {i.name: i for i in graph.initializer}
    missing = [t.name for t in plan.tensors if t.name not in inits]
    if missing:
        raise ConvertError(
            f"the plan names tensor(s) {missing[:5]} that the model lacks; was plan.json made for this model? (model sha256 {model.sha256[:12]}...)"
        )
    consumers: dict[str, list] = {}
    for node in graph.node:
        for j, name in enumerate(node.input):
            consumers.setdefault(name, []).append((node, j))
    front: list[Any] = []
    replaced: set[str] = set()
    nbits: dict[str, str] = {}
    kernels: dict[str, str] = {}
    for t in plan.tensors:
        p = effective(t.precision, model.weight_array(t.name).shape, model.layout(t.name))
        if p.stays_float:
            continue  # int32 is a full-integer bias: in a float graph it stays fp32
        w = numpy_helper.to_array(inits[t.name])
        if p.kind == "float":
            graph.initializer.append(numpy_helper.from_array(w.astype(np.float16), t.name + "__fp16"))
            front.append(helper.make_node("Cast", [t.name + "__fp16"], [t.name], to=TensorProto.FLOAT, name=t.name + "__cast"))
            replaced.add(t.name)
            continue
        if p.bits not in (8, 4):
            raise ConvertError(
                f"tensor '{t.name}' is planned {p.name}; ONNX Runtime stores int8 or int4 weights: plan for a target whose ort precisions list those"
            )
        block, why = nbits_block(consumers.get(t.name, []), w, p, model.layout(t.name), min_k)
        if block or (mobile and p.bits == 4):
            level = 4 if block else 0  # mobile 4-bit below the size rule: the kernel's float compute
            if not block:
                why = f"the only 4-bit weight .ort loads; accuracy_level 0: {why}"
            nbits[t.name] = _to_matmul_nbits(graph, consumers, t.name, w, p, (integers or {}).get(t.name), block or None, level)
            kernels[t.name] = f"MatMulNBits bits={p.bits} block_size={block or p.block_size} accuracy_level={level} ({why})"
            replaced.add(t.name)
            continue
        users = consumers.get(t.name, [])
        kernels[t.name] = f"DequantizeLinear + {users[0][0].op_type if users else 'float op'} ({why})"
        qt = (integers or {}).get(t.name) or quantize_int(w, p, model.layout(t.name))
        q_init = _int_initializer(qt.q, p.bits, t.name + "__q")
        graph.initializer.extend([q_init, numpy_helper.from_array(qt.scale, t.name + "__scale")])
        attrs: dict[str, Any] = {}
        if qt.axis is not None:
            attrs["axis"] = qt.axis
        if qt.block_size is not None:
            attrs["block_size"] = qt.block_size
        front.append(helper.make_node("DequantizeLinear", [t.name + "__q", t.name + "__scale"], [t.name], name=t.name + "__dq", **attrs))
        replaced.add(t.name)
    keep = [i for i in graph.initializer if i.name not in replaced]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    ins = [i for i in graph.input if i.name not in replaced]
    del graph.input[:]
    graph.input.extend(ins)
    nodes = front + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    if nbits and not any(o.domain == "com.microsoft" for o in proto.opset_import):
        proto.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    try:
        onnx.checker.check_model(proto)
    except onnx.checker.ValidationError as exc:
        raise ConvertError(f"the rewritten graph does not validate: {str(exc).splitlines()[0]}") from None
    return proto.SerializeToString(), nbits, kernels


def _plain_matmul_weight(users: list[tuple[Any, int]], w: np.ndarray) -> bool:
    """Whether the weight is the 2-D right-hand input of exactly one MatMul or plain Gemm (no transA, alpha, beta)."""
    if len(users) != 1 or users[0][1] != 1 or users[0][0].op_type not in ("Gemm", "MatMul") or w.ndim != 2:
        return False
    from onnx import helper

    attrs = {a.name: helper.get_attribute_value(a) for a in users[0][0].attribute}
    return not (attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0)


def _block_size_ok(n: int | None) -> bool:
    """Whether MatMulNBits takes ``n`` as its block size: a power of two >= 16."""
    return n is not None and n >= 16 and not n & (n - 1)


def nbits_block(users: list[tuple[Any, int]], w: np.ndarray, p: Precision, layout: Layout, min_k: int | None) -> tuple[int, str]:
    """The MatMulNBits block size that stores exactly the plan's integers and scales in exactly the planned
    bytes, or 0 and why not.

    A blocked plan maps when its block is a power of two >= 16 that divides K (MatMulNBits pads K to whole
    blocks: padding the plan did not price); a per-channel plan when K itself is such a power of two (one block
    spanning K holds the channel's one scale); a per-tensor plan never (MatMulNBits has one scale per block).

    Args:
        users: the (node, input slot) pairs reading the weight.
        w: the float weight.
        p: its effective precision.
        layout: its output-channel and reduction axes.
        min_k: the size rule measured for the target's CPU (`NBITS_MIN_K`); None: MatMulNBits is not used.

    Returns:
        (block size or 0, the reason, for convert.json).
    """
    if p.kind != "int" or p.bits not in (4, 8):
        return 0, f"{p.name}: MatMulNBits stores 4 or 8 bits"
    if not _plain_matmul_weight(users, w):
        return 0, "not the 2-D weight of one MatMul/Gemm"
    k = int(w.shape[layout.in_axis if layout.in_axis is not None else 0])
    if min_k is None:
        return 0, "MatMulNBits was not measured faster than float on this target's CPU"
    if k < min_k:
        return 0, f"K={k} < {min_k}: MatMulNBits not faster at this size on this target's CPU"

    if p.granularity == "block" and p.block_size is not None:
        if not _block_size_ok(p.block_size):
            return 0, f"block {p.block_size} is not a power of two >= 16"
        if k % p.block_size:
            return 0, f"K={k} is not a multiple of the block {p.block_size}: MatMulNBits would store padding the plan did not price"
        return p.block_size, f"K={k} >= {min_k}"
    if p.granularity == "channel":
        if _block_size_ok(k):
            return k, f"K={k} >= {min_k}, per channel = one block spanning K"
        return 0, f"per channel with K={k}, not a power of two: no whole-block layout in the planned bytes"
    return 0, "per tensor: MatMulNBits stores one scale per block"


def _nbits_arrays(qt: QuantizedTensor, bits: int, block: int) -> tuple[np.ndarray, np.ndarray]:
    """MatMulNBits' packed weight ``[N, ceil(K / block), block * bits / 8]`` (uint8, default zero point
    2^(bits-1): the signed integers shifted up) and its float32 scales ``[N * ceil(K / block)]``, from integers in
    ``[N, K]`` layout. K is zero-padded to whole blocks (what the kernel reads); a per-channel scale [N] is one
    block spanning K, so it needs ``block >= K``."""
    q_nk = np.asarray(qt.q, np.int16)
    n, k = q_nk.shape
    nb = -(-k // block)
    q = np.zeros((n, nb * block), np.int16)
    q[:, :k] = q_nk
    u = (q + (1 << (bits - 1))).astype(np.uint8).reshape(n, nb, block)
    packed = u if bits == 8 else (u[..., 0::2] | (u[..., 1::2] << 4)).astype(np.uint8)
    scale = np.ascontiguousarray(qt.scale, np.float32).reshape(-1)
    if scale.size == 1:
        scale = np.repeat(scale, n * nb)  # per tensor: every block gets the one scale (the kernel has no scalar form)
    if scale.size != n * nb:
        raise ConvertError(f"MatMulNBits needs {n * nb} scales ({n} rows x {nb} blocks of {block}); the plan's integers carry {scale.size}")
    return np.ascontiguousarray(packed), scale


def _to_matmul_nbits(
    graph: Any,
    consumers: dict[str, list[Any]],
    name: str,
    w: np.ndarray,
    p: Precision,
    given: QuantizedTensor | None = None,
    block: int | None = None,
    accuracy_level: int = 0,
) -> str:
    """Replace the Gemm/MatMul consuming ``name`` by MatMulNBits (+ Add for a Gemm bias).

    Args:
        given: the integers and scales to store (GPTQ's), in the weight's own layout; default: round to nearest.
        block: the block size (default: the precision's; a per-channel precision passes K, `nbits_block`).
        accuracy_level: 4 computes in int8 (activations quantized per block at run time), 0 in float.
    """
    from onnx import helper, numpy_helper

    users = consumers.get(name, [])
    if len(users) != 1 or users[0][1] != 1 or users[0][0].op_type not in ("Gemm", "MatMul") or w.ndim != 2:
        ops = ", ".join(f"{n.op_type} input {j}" for n, j in users) or "nothing"
        raise ConvertError(
            f"tensor '{name}' is planned {p.name}, but ORT-mobile runs 4-bit weights only as the 2-D weight of one "
            f"MatMul/Gemm (MatMulNBits); it feeds {ops}: plan int8 for it (target precisions.ort-mobile)"
        )
    if block is None and (p.granularity != "block" or not _block_size_ok(p.block_size)):
        raise ConvertError(f"tensor '{name}' is planned {p.name}; MatMulNBits needs blocks of a power of two >= 16, e.g. int4-block32")
    node = users[0][0]
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Gemm":
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            raise ConvertError(
                f"Gemm '{node.name or node.output[0]}' using '{name}' has transA/alpha/beta; only plain Gemm is rewritten to MatMulNBits"
            )
        transposed = not attrs.get("transB", 0)
    else:
        transposed = True
    w_nk = w.T if transposed else w
    n, k = w_nk.shape
    if given is not None:  # the same numbers in MatMulNBits' [N, K] layout (blocks run along K either way)
        q_nk, s_nk = (given.q.T, given.scale.T) if transposed else (given.q, given.scale)
    else:
        qt = quantize_int(np.ascontiguousarray(w_nk), p, Layout(0, 1))
        q_nk, s_nk = qt.q, qt.scale
    bs = int(block or p.block_size or k)
    packed, scale = _nbits_arrays(QuantizedTensor(np.asarray(q_nk), np.asarray(s_nk), 1, bs, p), p.bits, bs)
    b_name = name + NBITS_SUFFIX
    graph.initializer.extend([numpy_helper.from_array(packed, b_name), numpy_helper.from_array(scale, name + "__nbits_scale")])
    out = node.output[0]
    bias = node.input[2] if node.op_type == "Gemm" and len(node.input) > 2 and node.input[2] else None
    mm_out = out + "__nbits" if bias else out
    new = [
        helper.make_node(
            "MatMulNBits",
            [node.input[0], b_name, name + "__nbits_scale"],
            [mm_out],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=p.bits,
            block_size=bs,
            accuracy_level=accuracy_level,
            name=(node.name or out) + "__nbits",
        )
    ]
    if bias:
        new.append(helper.make_node("Add", [mm_out, bias], [out], name=(node.name or out) + "__bias"))
    idx = list(graph.node).index(node)
    graph.node.remove(node)
    for j, nn in enumerate(new):
        graph.node.insert(idx + j, nn)
    return b_name


def kernel_notes(kernels: dict[str, str]) -> list[str]:
    """One convert.json note counting the weights MatMulNBits runs (the per-tensor choice is in facts.weight_kernels)."""
    fast = [n for n, k in kernels.items() if k.startswith("MatMulNBits")]
    if not kernels:
        return []
    return [
        f"{len(fast)} of {len(kernels)} integer weight(s) run as MatMulNBits (int8 compute where accuracy_level=4), the others "
        "through DequantizeLinear and the float op: facts.weight_kernels says which and why"
    ]


def read_back(
    artifact: Path,
    model: Model,
    plan: Plan,
    nbits: dict[str, str],
    integers: dict[str, QuantizedTensor] | None,
    int32_biases: list[str] | tuple[str, ...] = (),
    transposed: list[str] | tuple[str, ...] = (),
) -> tuple[list[Any], int]:
    """Per planned tensor, the precision the file stores and whether its integers are exactly the plan's (its
    rounding's: GPTQ's when given, else round-to-nearest), and every constant byte it holds.

    ``int32_biases``: biases stored int32 at scale x_scale * w_scale because their op runs integer activations
    (`edgetqs.runtimes.ort_static`): the plan's float bias, as an integer kernel needs it. ``transposed``: Gemm(transB)
    weights the static route stores as [K, N] for MatMul (the same integers, transposed)."""
    from . import readback
    from .convert import TensorCheck

    g = readback.view(artifact)
    checks = []
    for t in plan.tensors:
        found, nbytes = readback.stored_precision(g, t.name, nbits)
        planned = "fp32" if t.precision.stays_float else t.precision.name  # float graphs keep full-integer biases in fp32
        if t.name in int32_biases:
            planned = "dq-int32"
        ok = found == planned or _same_layout(planned, found, model.weight_array(t.name).shape, model.layout(t.name))
        stored = readback.stored_integers(g, t.name, nbits) if ok and t.precision.kind == "int" and not t.precision.stays_float else None
        if stored is not None:
            p = effective(t.precision, model.weight_array(t.name).shape, model.layout(t.name))
            want = (integers or {}).get(t.name) or quantize_int(model.weight_array(t.name), p, model.layout(t.name))
            q = want.q.astype(np.int16)
            same = stored.shape == q.shape and bool((stored == q).all())
            if not same and (t.name in nbits or t.name in transposed):  # MatMulNBits keeps [N, K]; a MatMul weight is [K, N]
                same = stored.shape == q.T.shape and bool((stored == q.T).all())
            if not same:
                ok, found = False, f"{found} (integers differ from the plan's {plan.rounding} rounding)"
        checks.append(TensorCheck(name=t.name, planned=t.precision.name, found=found, match=ok, bytes=nbytes))
    return checks, sum(i.nbytes for i in g.inits.values())


def _same_layout(planned: str, found: str, shape: tuple[int, ...], layout: Layout) -> bool:
    """A per-channel plan stored as MatMulNBits blocks that each span the whole reduction axis is the same layout
    (one scale per output channel): ``int8-channel`` read back as ``int8-block128`` with K = 128."""
    from ..core.quantize import parse_precision

    try:
        a, b = parse_precision(planned), parse_precision(found)
    except Exception:  # noqa: BLE001 - 'missing', 'dq-int32'...: not a precision, not the same
        return False
    if a.kind != "int" or b.kind != "int" or a.bits != b.bits or len(shape) != 2 or layout.in_axis is None:
        return False
    k = shape[layout.in_axis]
    return {a.granularity, b.granularity} == {"channel", "block"} and (a.block_size or b.block_size or 0) == k


def canonical_pricing(runtime: str, storage: Any, model: Model, activations: str) -> Any:
    """Tensor-by-tensor prices (`packed_bytes`), with the non-weight bytes of the canonical graph the route writes."""
    from .prepare import canonical_fixed_bytes
    from .pricing import storage_pricing

    p = storage_pricing(runtime, storage, activations)
    p.fixed = canonical_fixed_bytes(model, runtime)
    if activations == "int8":
        from .ort_static import int8_extra_bytes

        extra = int8_extra_bytes(model)
        p.fixed += extra
        p.notes.append(
            f"int8 activations: {extra:,} B for activation scales and zero points and int32 bias scales, priced as if every "
            "Conv/Gemm/MatMul weight were int8 (an upper bound: ops whose weight stays float keep float activations)"
        )
    return p


ACTIVATION_QUANT_OPS = ("QuantizeLinear", "DynamicQuantizeLinear", "DynamicQuantizeMatMul")


def fold_weights(artifact: Path | bytes) -> bool:
    """Whether the device should dequantize the weights once at load (`edgetqs.ondevice.runners.FOLD_WEIGHTS`): a
    weight-only file (DequantizeLinear on initializers, no activation quantization). With integer activations the
    fold would also switch off the QDQ fusions that run them."""
    from . import readback

    g = readback.view_onnx(artifact) if isinstance(artifact, bytes) else readback.view(artifact)
    if any(n.op in ACTIVATION_QUANT_OPS for n in g.nodes):
        return False
    return any(n.op == "DequantizeLinear" and n.inputs and n.inputs[0] in g.inits for n in g.nodes)


def validate_onnx(artifact: Path, ort_format: bool) -> None:
    from ..ondevice.runners import OrtRunner

    OrtRunner(str(artifact), ort_format=ort_format)


def _model_value_info(data: bytes, original: Any) -> bytes:
    """The artifact with only the shape annotations the input model had: canonicalisation's shape inference
    annotates every intermediate tensor, which made an fp32 "artifact" several percent larger than its input."""
    import onnx

    keep = {v.name for v in original.graph.value_info}
    proto = onnx.load_from_string(data)
    if all(v.name in keep for v in proto.graph.value_info):
        return data
    kept = [v for v in proto.graph.value_info if v.name in keep]
    del proto.graph.value_info[:]
    proto.graph.value_info.extend(kept)
    return proto.SerializeToString()


class OrtRuntime(RuntimeInfo):
    """ONNX Runtime: an .onnx file with weight-only QDQ (int8/int4 + DequantizeLinear) and fp16 Casts."""

    def convert(self, job: ConvertJob) -> Converted:
        from ..ondevice.runners import OrtRunner

        ints = job.plan_integers()
        prep = job.prepared("ort")  # canonical graph: run-time shape/pad arithmetic folded, weights kept by name
        acts = job.activation_mode("ort")
        # static int8 activations need every int8 weight behind a DequantizeLinear (the QDQ fusions read it)
        data, nbits, chosen = qdq_model(prep.model, job.plan, integers=ints, min_k=nbits_min_k(job.target) if acts == "float" else None)
        facts: dict[str, Any] = {"prepared": prep.record(), "activations": acts, "weight_kernels": chosen}
        notes = prep.notes() + kernel_notes(chosen)
        int32: list[str] = []
        transposed: list[str] = []
        exact_session = None
        if acts == "int8":
            from ..allocation.activations import choose_activations
            from .ort_static import fused_kernels, integer_ops, static_qdq

            if not integer_ops(data):
                static_qdq(data, prep.model.proto, [])  # raises its clear error: no op has an int8 weight
            steps, tol = job.check_settings()
            choice = choose_activations(
                job.model,
                job.spec,
                job.contexts,
                data,
                prep.model.proto,
                job.rows(),
                steps,
                tol,
                goal=job.activation_goal,
                also=job.check_contexts(steps),
            )
            facts["activation_choice"] = choice.model_dump(mode="json")
            notes.append(choice.summary())
            if not choice.ops("int8") and not choice.ops("dynamic"):
                facts["activations"] = "float"
                notes.append("every activation stays float: the weight-only artifact (its rollout error is the weights' alone)")
            else:
                kept, dyn = set(choice.ops("float")), set(choice.ops("dynamic"))
                # the host check runs the same integer arithmetic unfused: this host's u8 x s8 kernels may saturate
                # (x86-64 without VNNI), the target's do not (`static_qdq`'s ``exact``)
                exact_session = OrtRunner(
                    static_qdq(data, prep.model.proto, job.rows(), kept, dyn, exact=True)[0], threads=0, optimize=False
                )
                data, q = static_qdq(data, prep.model.proto, job.rows(), keep_float=kept, dynamic=dyn)
                notes.append(
                    "the host check runs the integer activations' arithmetic unfused (exactly what ARM's kernels compute; "
                    "onnxruntime's u8 x s8 kernels on an x86-64 CPU without VNNI saturate 16-bit sums)"
                )
                int32, transposed = q["int32_biases"], q["transposed_weights"]
                nbits = {**nbits, **q["dynamic_weights"]}
                kernels = fused_kernels(data)
                facts["ort_static"] = {**q, "optimized_graph_ops": kernels}
                fused = {k: v for k, v in kernels.items() if k.startswith(("QLinear", "QGemm", "DynamicQuantize"))}
                notes.append(
                    f"int8 activations (uint8 asymmetric, min/max on {len(job.rows())} closed-loop inputs) around {len(q['quantized_nodes'])} "
                    f"kernel op(s), per call on {len(q['dynamic_nodes'])}, float on {len(q['float_nodes'])}; onnxruntime's optimised "
                    f"graph runs {', '.join(f'{k} x{v}' for k, v in sorted(fused.items())) or 'no integer kernel'}"
                )
        data = _model_value_info(data, job.model.proto)
        artifact = job.work / job.file_name
        artifact.write_bytes(data)
        checks, weight_bytes = read_back(artifact, prep.model, job.plan, nbits, ints, int32_biases=int32, transposed=transposed)
        fold = exact_session is None and fold_weights(artifact)
        if fold:
            facts["fold_weights"] = True
            notes.append(
                "load it with the session option session.disable_quant_qdq=1 (the check does): onnxruntime then dequantizes the "
                "int8/int4 weights once at load instead of on every call (fp32 speed, the small file; float weights in RAM)"
            )
        session = exact_session if exact_session is not None else OrtRunner(data, threads=0, fold_weights=fold)
        return Converted(artifact, checks, weight_bytes, session, notes=notes, facts=facts)

    def pricing(self, model: Model, activations: str, exact: bool = False, auto: bool = False) -> Any:
        return canonical_pricing(self.name, self.storage, model, activations)

    def open(self, artifact: Path, model: Model, facts: dict[str, Any]) -> Any:
        from ..ondevice.runners import OrtRunner

        return OrtRunner(str(artifact), threads=0)

    def validate(self, artifact: Path) -> None:
        validate_onnx(artifact, ort_format=False)

    def job(self, artifact: Path, io: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
        return {"runner": self.runner, "fold_weights": fold_weights(artifact)}


RUNTIME = OrtRuntime(
    name="ort",
    description="ONNX Runtime (.onnx, weight-only int8/int4 QDQ, fp16)",
    suffix=".ort.onnx",
    accepts=("ort", "ort-mobile"),
    integer_activations=True,
    activations=("float", "int8"),
    also_reads=(".onnx",),
)
