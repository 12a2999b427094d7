"""Integer activations for ONNX Runtime: static QDQ on top of the plan's weight-only QDQ graph.

Weight-only artifacts dequantize their weights on every call: smaller, not faster. With ``--activations
int8`` each Conv, Gemm and MatMul whose weight the plan stores as int8 gets its input and output
activations quantized (uint8, asymmetric, min/max calibrated on the float model's own closed-loop
rollouts, as the TFLite-Micro route does) and its bias stored as int32 at scale ``x_scale * w_scale``:
the DequantizeLinear -> op -> QuantizeLinear groups that onnxruntime's QDQ transformer fuses into
QLinearConv / QLinearMatMul at graph optimisation (level basic and above). onnxruntime 1.32 leaves
DQ -> Gemm -> Q a float Gemm, so a plain Gemm is rewritten to MatMul + Add first (its weight stored transposed
when transB: the same integers), and its bias stays a float Add. `fused_kernels` reads
the optimised graph onnxruntime itself writes, so a test can prove the integer kernels run.

The weights keep the plan's integers and scales (written by `edgetqs.runtimes.ort.qdq_model`), so the
read-back of every weight is unchanged; a bias of a quantized op is stored int32 (4 bytes per element
plus its per-channel scales), priced by `int8_extra_bytes`.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from .base import ConvertError

KERNEL_OPS = ("Conv", "Gemm", "MatMul")
FUSED = ("QLinearConv", "QLinearMatMul", "QGemm", "MatMulIntegerToFloat", "DynamicQuantizeMatMul", "ConvInteger", "MatMulInteger")


def _q_params(lo: float, hi: float) -> tuple[np.float32, np.uint8]:
    """uint8 asymmetric scale and zero point covering [lo, hi] and 0 (zero must be exact)."""
    lo, hi = min(lo, 0.0), max(hi, 0.0)
    scale = (hi - lo) / 255.0 if hi > lo else 1.0
    zp = int(np.clip(round(-lo / scale), 0, 255))
    return np.float32(scale), np.uint8(zp)


def intermediate_values(float_proto: Any, names: list[str], rows: list[dict[str, np.ndarray]]) -> Iterator[list[np.ndarray]]:
    """The named tensors of the float model (made graph outputs, unoptimised session), one list per input row."""
    import onnx
    import onnxruntime as ort

    m = onnx.ModelProto()
    m.CopyFrom(float_proto)
    have = {o.name for o in m.graph.output}
    for n in names:
        if n not in have:
            m.graph.output.append(onnx.helper.make_empty_tensor_value_info(n))
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    s = ort.InferenceSession(m.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    ins = {i.name for i in s.get_inputs()}
    for r in rows:
        yield list(s.run(names, {k: v for k, v in r.items() if k in ins}))


def calibrate(float_proto: Any, names: list[str], rows: list[dict[str, np.ndarray]]) -> dict[str, tuple[float, float]]:
    """min/max of the named tensors of the float model over the given input rows."""
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for outs in intermediate_values(float_proto, names, rows):
        for n, v in zip(names, outs):
            if v.size:
                lo[n], hi[n] = min(lo[n], float(np.min(v))), max(hi[n], float(np.max(v)))
    return {n: (lo[n], hi[n]) for n in names if np.isfinite(lo[n])}


def integer_ops(data: bytes) -> list[tuple[str, str]]:
    """(key, op type) of every kernel op of a weight-only QDQ model that can run integer activations: a Conv, Gemm
    or MatMul whose weight is a per-tensor or per-channel int8 DequantizeLinear. The key is the node's name (its
    output's for an unnamed node): what ``keep_float`` and ``dynamic`` name."""
    import onnx

    g = onnx.load_from_string(data).graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    return [(_key(n), n.op_type) for n in g.node if _int8_weight(n, producer, inits) is not None]


def _key(n: Any) -> str:
    return str(n.name or n.output[0])


def _int8_weight(n: Any, producer: dict[str, Any], inits: dict[str, Any]) -> Any:
    """The DequantizeLinear of ``n``'s int8 weight (per tensor or per channel), or None."""
    from onnx import TensorProto

    if n.op_type not in KERNEL_OPS or len(n.input) < 2:
        return None
    if n.op_type == "Gemm" and any(a.name == "transA" and a.i for a in n.attribute):
        return None
    dq = producer.get(n.input[1])
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return None
    if inits[dq.input[0]].data_type != TensorProto.INT8 or any(a.name == "block_size" and a.i for a in dq.attribute):
        return None
    return dq


def static_qdq(
    data: bytes,
    float_proto: Any,
    rows: list[dict[str, np.ndarray]],
    keep_float: set[str] | frozenset[str] = frozenset(),
    dynamic: set[str] | frozenset[str] = frozenset(),
    exact: bool = False,
) -> tuple[bytes, dict[str, Any]]:
    """Add activation QDQ (and int32 biases) around every kernel op whose weight is an int8 DequantizeLinear.

    Args:
        data: the weight-only QDQ model (`qdq_model`'s bytes).
        float_proto: the float graph it was made from (same tensor names), calibrated on ``rows``.
        rows: batch-1 (or batch-B) inputs of the float model.
        keep_float: kernel ops (`integer_ops` keys) whose activations stay float: their weight is written as
            Cast(int8) * scale, which onnxruntime folds into a float weight at load (`_fold_at_load`), and a Gemm
            stays a Gemm (as a MatMul behind a DequantizeLinear, onnxruntime would fuse it into MatMulNBits, slow on a
            Cortex-A72).
        dynamic: MatMul/Gemm ops (`integer_ops` keys) whose input is quantized per call instead (uint8 at the
            range of each call's own values, output float): ``com.microsoft.DynamicQuantizeMatMul`` reads the int8
            weight directly. Wider than a calibrated scale, slower than QLinearMatMul. A Conv named here stays static.
        exact: the same arithmetic without integer kernels, for measuring on any host (run it unoptimised): a
            dynamic op as DynamicQuantizeLinear -> DequantizeLinear -> MatMul. onnxruntime's u8 x s8 kernels on an
            x86-64 CPU without VNNI add pairs of products in saturating 16-bit sums (station at 0.3 of fp32: worst
            normalised RMSE 0.76 with DynamicQuantizeMatMul there, 0.23 unfused); ARM's kernels do not saturate.

    Returns:
        (the model's bytes, facts: quantized (static) nodes, dynamic nodes, float nodes, int32 biases, activation
        tensors quantized, and ``dynamic_weights``: planned weight -> the int8 initializer DynamicQuantizeMatMul reads).

    Raises:
        ConvertError: no kernel op has an int8 weight (nothing would run in integer).
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    m = onnx.load_from_string(data)
    g = m.graph
    inits = {i.name: i for i in g.initializer}
    producer = {o: n for n in g.node for o in n.output}
    split, transposed, renamed = _gemms_to_matmul(g, inits, producer, skip=set(keep_float))
    producer = {o: n for n in g.node for o in n.output}
    targets, dyn_targets, kept = [], [], []
    for n in g.node:
        dq = _int8_weight(n, producer, inits)
        if dq is None:
            continue
        key = renamed.get(_key(n), _key(n))
        if key in keep_float:
            kept.append(key)
            _fold_at_load(g, dq, inits)
        elif key in dynamic and n.op_type == "MatMul" and _dynamic_ok(n, dq, inits, g):
            dyn_targets.append((n, dq, key))
        else:
            targets.append((n, dq))
    if not targets and not dyn_targets:
        raise ConvertError(
            "int8 activations: no Conv, Gemm or MatMul has an int8 weight in the plan; plan int8 weights or use --activations float"
        )
    dynamic_weights = {}
    for n, dq, key in dyn_targets:
        if exact:  # the per-call uint8 input, dequantized; the weight stays behind its DequantizeLinear
            x = n.input[0]
            new_nodes_dyn = [
                helper.make_node("DynamicQuantizeLinear", [x], [f"{key}__dyn_q", f"{key}__dyn_s", f"{key}__dyn_z"]),
                helper.make_node("DequantizeLinear", [f"{key}__dyn_q", f"{key}__dyn_s", f"{key}__dyn_z"], [f"{key}__dyn_dq"]),
            ]
            n.input[0] = f"{key}__dyn_dq"
            g.node.extend(new_nodes_dyn)
            continue
        # DynamicQuantizeMatMul(A, B int8 [K, N], b_scale [N] or scalar): the weight's integers and scales as planned
        dynamic_weights[dq.output[0]] = dq.input[0]
        mm = helper.make_node(
            "DynamicQuantizeMatMul", [n.input[0], dq.input[0], dq.input[1]], [n.output[0]], name=n.name or key, domain="com.microsoft"
        )
        g.node.remove(dq)
        g.node.remove(n)
        g.node.append(mm)  # `_toposort` below puts it back in order
    if dyn_targets and not any(o.domain == "com.microsoft" for o in m.opset_import):
        m.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    acts = sorted({n.input[0] for n, _ in targets} | {n.output[0] for n, _ in targets})
    ranges = calibrate(_split_bias(float_proto, split), acts, rows) if acts else {}
    qname: dict[str, str] = {}  # activation -> its dequantized copy

    new_inits, new_nodes = [], []

    def qdq(name: str) -> str:
        if name in qname:
            return qname[name]
        lo, hi = ranges.get(name, (0.0, 1.0))
        s, z = _q_params(lo, hi)
        new_inits.extend(
            [
                numpy_helper.from_array(np.array(s, np.float32), name + "__act_scale"),
                numpy_helper.from_array(np.array(z, np.uint8), name + "__act_zp"),
            ]
        )
        new_nodes.append(
            helper.make_node("QuantizeLinear", [name, name + "__act_scale", name + "__act_zp"], [name + "__act_q"], name=name + "__act_q")
        )
        new_nodes.append(
            helper.make_node(
                "DequantizeLinear", [name + "__act_q", name + "__act_scale", name + "__act_zp"], [name + "__act_dq"], name=name + "__act_dq"
            )
        )
        qname[name] = name + "__act_dq"
        return qname[name]

    biases = []
    for n, dq in targets:
        x = n.input[0]
        x_scale = float(_q_params(*ranges.get(x, (0.0, 1.0)))[0])
        n.input[0] = qdq(x)
        if n.op_type in ("Conv", "Gemm") and len(n.input) > 2 and n.input[2] in inits and inits[n.input[2]].data_type == TensorProto.FLOAT:
            b = numpy_helper.to_array(inits[n.input[2]]).astype(np.float64)
            w_scale = numpy_helper.to_array(inits[dq.input[1]]).astype(np.float64).reshape(-1)
            if w_scale.size not in (1, b.size):
                continue
            scale = (
                (x_scale * w_scale).astype(np.float32) * np.ones(b.size, np.float32)
                if w_scale.size == 1
                else (x_scale * w_scale).astype(np.float32)
            )
            q = np.clip(np.round(b / scale), -(2**31), 2**31 - 1).astype(np.int32)
            bn = n.input[2]
            new_inits.extend([numpy_helper.from_array(q, bn + "__int32"), numpy_helper.from_array(scale, bn + "__int32_scale")])
            # the DequantizeLinear's output keeps the bias's name: the read-back finds it (int32) under the planned name
            new_nodes.append(
                helper.make_node("DequantizeLinear", [bn + "__int32", bn + "__int32_scale"], [bn], axis=0, name=bn + "__int32_dq")
            )
            biases.append(bn)
    # outputs: Q -> DQ after each kernel op; consumers read the dequantized copy (a graph output keeps the
    # op's float output, which the QuantizeLinear also reads)
    for o in sorted({n.output[0] for n, _ in targets}):
        dq_name = qdq(o)
        for node in g.node:
            for j, i in enumerate(node.input):
                if i == o:
                    node.input[j] = dq_name
    g.node.extend(new_nodes)
    g.initializer.extend(new_inits)
    for b in biases:  # the float bias is replaced by its int32 form
        g.initializer.remove(next(i for i in g.initializer if i.name == b))
    _toposort(g)
    facts = {
        "activations": "int8",
        "quantized_nodes": [renamed.get(_key(n), _key(n)) for n, _ in targets],
        "dynamic_nodes": [key for _, _, key in dyn_targets],
        "float_nodes": kept,
        "dynamic_weights": dynamic_weights,
        "int32_biases": biases,
        "activation_tensors": len(qname),
        "gemm_as_matmul": sorted(split),
        "transposed_weights": transposed,
    }
    return m.SerializeToString(), facts


def _fold_at_load(g: Any, dq: Any, inits: dict[str, Any]) -> None:
    """Write a float-activation op's int8 weight as Cast(int8) * scale instead of DequantizeLinear: onnxruntime's constant
    folding turns that into a float weight when the session loads (it keeps DequantizeLinear for its QDQ fusions, so a
    float op behind one dequantizes its weight on every call: 1.8-2.7x fp32 on a Cortex-A72). Same integers, same scales,
    same bytes; the scale gets the weight's rank so that it broadcasts along the quantized axis."""
    from onnx import TensorProto, helper, numpy_helper

    if (len(dq.input) > 2 and dq.input[2]) or dq.input[1] not in inits:
        return  # a zero point: keep the DequantizeLinear
    if sum(dq.input[1] in n.input for n in g.node) != 1:
        return  # a scale shared with another node keeps its shape
    q, sc = inits[dq.input[0]], inits[dq.input[1]]
    scale = numpy_helper.to_array(sc)
    if scale.size > 1:
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % len(q.dims)
        shape = [1] * len(q.dims)
        shape[axis] = scale.size
        sc.CopyFrom(numpy_helper.from_array(scale.reshape(shape), sc.name))
    w = dq.output[0]
    cast = helper.make_node("Cast", [dq.input[0]], [w + "__int8_cast"], to=TensorProto.FLOAT, name=w + "__int8_cast")
    mul = helper.make_node("Mul", [w + "__int8_cast", dq.input[1]], [w], name=w + "__scale")
    g.node.remove(dq)
    g.node.extend([cast, mul])  # `_toposort` puts them in order


def _dynamic_ok(n: Any, dq: Any, inits: dict[str, Any], g: Any) -> bool:
    """DynamicQuantizeMatMul takes a 2-D weight [K, N] with one scale or one per output column, read by this op only."""
    from onnx import numpy_helper

    q = inits[dq.input[0]]
    if len(q.dims) != 2 or dq.input[1] not in inits or (len(dq.input) > 2 and dq.input[2]):
        return False
    size = int(np.prod(inits[dq.input[1]].dims)) if inits[dq.input[1]].dims else 1
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if size != 1 and not (size == q.dims[1] and axis in (1, -1)):
        return False
    if numpy_helper.to_array(inits[dq.input[1]]).size != size:
        return False
    return sum(dq.output[0] in other.input for other in g.node) == 1


def _gemms_to_matmul(
    g: Any, inits: dict[str, Any], producer: dict[str, Any], skip: set[str] | None = None
) -> tuple[dict[str, str], list[str], dict[str, str]]:
    """Rewrite each plain Gemm (no transA, alpha = beta = 1) whose weight is a per-tensor or per-channel int8
    DequantizeLinear into MatMul (+ Add for its bias): onnxruntime 1.32 fuses DQ -> MatMul -> Q into QLinearMatMul
    but leaves DQ -> Gemm -> Q a float Gemm. A transB weight's integers are stored transposed ([K, N]), its
    per-channel scales then run along axis 1: the same numbers, which the read-back compares transposed.

    ``skip``: Gemms (`integer_ops` keys) that keep float activations stay Gemms.

    Returns:
        (Gemm output -> the MatMul's output before the bias Add, weight names stored transposed, the MatMul's
        key -> the Gemm's key)."""
    from onnx import TensorProto, helper, numpy_helper

    split: dict[str, str] = {}
    transposed: list[str] = []
    renamed: dict[str, str] = {}
    added = 0  # nodes inserted so far: positions in the original list shift by this many
    for idx, n in enumerate(list(g.node)):
        if n.op_type != "Gemm" or len(n.input) < 2:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in n.attribute}
        if attrs.get("transA", 0) or attrs.get("alpha", 1.0) != 1.0 or attrs.get("beta", 1.0) != 1.0:
            continue
        dq = producer.get(n.input[1])
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            continue
        q_init = inits[dq.input[0]]
        if q_init.data_type != TensorProto.INT8 or any(a.name == "block_size" and a.i for a in dq.attribute):
            continue
        if sum(n.input[1] in other.input for other in g.node) != 1:
            continue  # a weight shared with another op keeps its layout
        if skip and _key(n) in skip:
            continue
        if attrs.get("transB", 0):
            q = numpy_helper.to_array(q_init)
            q_init.CopyFrom(numpy_helper.from_array(np.ascontiguousarray(q.T), q_init.name))
            for a in dq.attribute:
                if a.name == "axis":
                    a.i = 1 - a.i
            transposed.append(n.input[1])
        out = n.output[0]
        bias = n.input[2] if len(n.input) > 2 and n.input[2] else None
        mm = out + "__matmul" if bias else out
        new = [helper.make_node("MatMul", [n.input[0], n.input[1]], [mm], name=(n.name or out) + "__matmul")]
        if bias:
            new.append(helper.make_node("Add", [mm, bias], [out], name=(n.name or out) + "__bias"))
        g.node.remove(n)
        for j, nn in enumerate(new):
            g.node.insert(idx + added + j, nn)
        added += len(new) - 1
        split[out] = mm
        renamed[_key(new[0])] = _key(n)
    return split, transposed, renamed


def _split_bias(float_proto: Any, split: dict[str, str]) -> Any:
    """A copy of the float graph whose rewritten Gemms write their pre-bias sum under the MatMul's output name
    (what the static route calibrates), then add the bias."""
    import onnx
    from onnx import helper

    if not any(out != mm for out, mm in split.items()):
        return float_proto
    m = onnx.ModelProto()
    m.CopyFrom(float_proto)
    added = 0  # Adds inserted so far: positions in the original list shift by this many
    for idx, n in enumerate(list(m.graph.node)):
        if n.op_type == "Gemm" and n.output[0] in split and split[n.output[0]] != n.output[0] and len(n.input) > 2:
            out, bias = n.output[0], n.input[2]
            n.output[0] = split[out]
            del n.input[2]
            m.graph.node.insert(idx + added + 1, helper.make_node("Add", [split[out], bias], [out]))
            added += 1
    return m


def int8_extra_bytes(model: Any) -> int:
    """What `static_qdq` adds at most: per activation tensor a float scale and a uint8 zero point, per bias element
    of a Conv a float scale (the int32 value replaces the float one, same size; a Gemm's bias stays a float Add
    after its rewrite to MatMul)."""
    weights = {w.name for w in model.weights}
    acts: set[str] = set()
    extra = 0
    for n in model.proto.graph.node:
        if n.op_type in KERNEL_OPS and len(n.input) > 1 and n.input[1] in weights:
            acts.update((n.input[0], n.output[0]))
            if n.op_type == "Conv" and len(n.input) > 2 and n.input[2] in weights:  # Gemm becomes MatMul + a float Add
                extra += 4 * int(model.weight_array(n.input[2]).size)
    return extra + 5 * len(acts)


def _toposort(g: Any) -> None:
    avail = {i.name for i in g.input} | {i.name for i in g.initializer} | {""}
    pending = list(g.node)
    order = []
    while pending:
        rest = []
        for n in pending:
            if all(i in avail for i in n.input):
                order.append(n)
                avail.update(n.output)
            else:
                rest.append(n)
        if len(rest) == len(pending):
            raise ConvertError("int8 activations: the graph has a cycle after inserting QDQ (a bug: report it)")
        pending = rest
    del g.node[:]
    g.node.extend(order)


def fused_kernels(data: bytes, level: str = "extended") -> dict[str, int]:
    """Op counts of the graph onnxruntime optimises and runs (its own ``optimized_model_filepath``)."""
    import tempfile
    from pathlib import Path

    import onnx
    import onnxruntime as ort

    with tempfile.TemporaryDirectory(prefix="edgetqs-ortopt-") as tmp:
        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        opts.graph_optimization_level = {
            "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
            "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
            "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
        }[level]
        out = Path(tmp) / "opt.onnx"
        opts.optimized_model_filepath = str(out)
        ort.InferenceSession(data, opts, providers=["CPUExecutionProvider"])
        m = onnx.load(str(out))
    counts: dict[str, int] = {}
    for n in m.graph.node:
        counts[n.op_type] = counts.get(n.op_type, 0) + 1
    return counts
