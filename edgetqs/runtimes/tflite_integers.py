"""The plan's own integers (GPTQ) in a TFLite file ai-edge-quantizer wrote.

ai-edge-quantizer rounds every weight to nearest with its own scales. A GPTQ plan's integers differ from those (that
is the point of GPTQ), so after the quantizer has laid out each weight (type, scales, quantized dimension, packing)
this module overwrites the integers and scales with the plan's, element for element, and the read-back proves it.

Where each stored element comes from is found by value: onnx2tf permutes layouts (Gemm [out, in] stays, Conv
[O, I, kh, kw] becomes [O, kh, kw, I]) and may split a recurrent weight into gate pieces or fold a multiplier in,
but it does not change the values. A whole tensor is first tried as a transpose of the source (exact even where
values repeat); otherwise each stored value is looked up in the source, and a repeated value must carry one
integer and one scale wherever it occurs, or the mapping would be a guess and convert refuses.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from typing import Any

import numpy as np

from ..core.quantize import QuantizedTensor
from .base import ConvertError


def _full_scale(qt: QuantizedTensor) -> np.ndarray:
    """The scale of every element, in the source layout."""
    return QuantizedTensor(np.ones(qt.q.shape, np.int8), qt.scale, qt.axis, qt.block_size, qt.precision).dequantize()


def _by_transpose(src: np.ndarray, stored: np.ndarray, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The axis permutation p with src.transpose(p).reshape(shape) == stored (same size), if any."""
    want = stored.reshape(shape)
    for p in itertools.permutations(range(src.ndim)):
        if np.allclose(np.transpose(src, p).reshape(shape), want, rtol=1e-5, atol=0.0):
            return p
    return None


def _by_value(name: str, src: np.ndarray, stored: np.ndarray, q: np.ndarray, s: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each stored element's integer and scale, looked up by its value in the source."""
    flat, qf, sf = src.ravel(), q.ravel(), s.ravel()
    order = np.argsort(flat, kind="stable")
    keys = flat[order]
    pos = np.clip(np.searchsorted(keys, stored), 0, keys.size - 1)
    left = np.clip(pos - 1, 0, keys.size - 1)
    pos = np.where(np.abs(keys[left] - stored) < np.abs(keys[pos] - stored), left, pos)
    tol = 1e-5 * max(float(np.max(np.abs(flat))), 1e-30)
    if np.any(np.abs(keys[pos] - stored) > tol):
        raise ConvertError(
            f"'{name}': the TFLite weight holds values the source tensor does not (transformed by the converter); use a round-to-nearest plan"
        )
    # a value that occurs more than once must carry one integer and one scale, else which element is which is a guess
    qs, ss = qf[order], sf[order]
    first = np.searchsorted(keys, keys, side="left")
    if np.any(qs != qs[first]) or np.any(ss != ss[first]):
        raise ConvertError(
            f"'{name}': repeated weight values carry different GPTQ integers, and the TFLite layout cannot tell which is "
            "which; use a round-to-nearest plan for TFLite or convert to ort"
        )
    return qs[pos], ss[pos]


def _pack4(q: np.ndarray) -> np.ndarray:
    """Two 4-bit values per byte, low nibble first (TFLite INT4, as ai-edge-quantizer packs)."""
    u = (q.ravel().astype(np.int16) & 0x0F).astype(np.uint8)
    if u.size % 2:
        u = np.append(u, np.uint8(0))
    return (u[0::2] | (u[1::2] << 4)).astype(np.uint8)


def weight_locator(m: Any, ops: dict[int, str]) -> Callable[[Any], int | None]:
    """For quantized ``m``: match -> index of the tensor holding its stored weight (behind a DEQUANTIZE when
    weight-only), or None when its consuming op is gone. The op and producer maps are built once."""
    from .litert import op_name, scope

    sg = m.subgraphs[0]
    by_scope = {scope(sg, op): op for op in sg.operators}
    producer = {o: op for op in sg.operators for o in op.outputs}

    def locate(f: Any) -> int | None:
        op = by_scope.get(f.scope)
        if op is None:
            return None
        i = op.inputs[f.pos]
        prod = producer.get(i)
        if prod is not None and op_name(m, prod, ops) == "DEQUANTIZE":
            i = prod.inputs[0]
        return int(i)

    return locate


def _requantize_biases(
    m: Any, weight: int, old: np.ndarray, new: np.ndarray, ops: dict[int, str], types: dict[int, str], done: set[int]
) -> None:
    """Each integer bias of a kernel reading ``weight``, stored at input scale x the weight's new scales.

    A full-integer kernel takes its bias at scale s_in x s_w (per channel), so new weight scales need new bias integers:
    s_in is the old bias scale over the old weight scale, and the bias's value (its old integers x old scales) is rounded
    again at the new scale, a change below half the old bias step. A bias shared by kernels with one input scale is
    requantized once (``done``)."""
    from .litert import WEIGHT_OPS, op_name
    from .pricing import BIAS_POS

    sg = m.subgraphs[0]
    for op in sg.operators:
        name = op_name(m, op, ops)
        w_pos, b_pos = WEIGHT_OPS.get(name), BIAS_POS.get(name)
        if w_pos is None or b_pos is None or w_pos >= len(op.inputs) or op.inputs[w_pos] != weight or b_pos >= len(op.inputs):
            continue
        bi = int(op.inputs[b_pos])
        if bi < 0 or bi in done:
            continue
        bt = sg.tensors[bi]
        kind = types.get(bt.type)
        if kind not in ("INT32", "INT64") or bt.quantization is None or bt.quantization.scale is None:
            continue  # a float bias (weight-only and dynamic range): nothing follows the weight scales
        dtype = np.int32 if kind == "INT32" else np.int64
        b_old = np.asarray(bt.quantization.scale, np.float64)
        if b_old.size == 1 and new.size > 1:
            raise ConvertError(
                f"a bias with one scale for all channels follows per-channel weight scales (tensor {bi}); use a round-to-nearest plan"
            )
        n = max(b_old.size, old.size, new.size)
        s_in = np.broadcast_to(b_old, n) / np.broadcast_to(old, n)
        b_new = (s_in * np.broadcast_to(new.astype(np.float64), n)).astype(np.float32)
        raw = np.asarray(m.buffers[bt.buffer].data, np.uint8).view(dtype).astype(np.float64)
        value = raw * (b_old if b_old.size > 1 else b_old[0])
        info = np.iinfo(dtype)
        q = np.clip(np.rint(value / b_new.astype(np.float64)), info.min, info.max).astype(dtype)
        m.buffers[bt.buffer].data = q.view(np.uint8)
        bt.quantization.scale = b_new if b_old.size > 1 else b_new[:1]
        done.add(bi)


def write_plan_integers(
    buf: bytes, float_model: Any, matched: list[Any], integers: dict[str, QuantizedTensor], source: Any, biases: bool = False
) -> bytes:
    """``buf`` (ai-edge-quantizer's output) with every matched weight's integers and scales replaced by the plan's.

    Args:
        buf: the quantized TFLite flatbuffer.
        float_model: the float TFLite ``ModelT`` the weights were matched in (same tensor indices).
        matched: `litert.Match` of every planned tensor.
        integers: tensor name -> the plan's `QuantizedTensor` (source layout).
        source: the `Model` the plan was made for (its float weights).
        biases: requantize the integer biases of the kernels whose weights change (full-integer models).

    Raises:
        ConvertError: a weight whose stored layout cannot be traced to the source element by element, or whose
            quantized dimension is not the plan's channel axis.
    """
    import flatbuffers

    from .litert import names, schema

    fb = schema()
    ops, types = names(fb)
    m = fb.ModelT.InitFromPackedBuf(buf, 0)
    sg, fsg = m.subgraphs[0], float_model.subgraphs[0]
    locate = weight_locator(m, ops)
    requantized: set[int] = set()
    for f in matched:
        qt = integers.get(f.tensor)
        if qt is None or f.precision.kind != "int" or not f.is_weight:
            continue
        ft = fsg.tensors[f.index]
        stored = np.frombuffer(bytes(float_model.buffers[ft.buffer].data), np.float32) / np.float32(f.factor)
        shape = tuple(int(d) for d in ft.shape)
        src = np.asarray(source.weight_array(f.tensor), np.float32)
        s_full = _full_scale(qt)
        perm = _by_transpose(src, stored, shape) if src.size == stored.size else None
        if perm is not None:
            q = np.transpose(qt.q, perm).reshape(shape)
            s = np.transpose(s_full, perm).reshape(shape)
        else:
            qv, sv = _by_value(f.tensor, src, stored, qt.q, s_full)
            q, s = qv.reshape(shape), sv.reshape(shape)
        sign = 1 if f.factor >= 0 else -1
        q = (sign * q.astype(np.int16)).astype(np.int16)
        s = s * np.float32(abs(f.factor))
        lo, hi = -(2 ** (qt.precision.bits - 1)), 2 ** (qt.precision.bits - 1) - 1
        if q.min() < lo or q.max() > hi:
            raise ConvertError(
                f"'{f.tensor}': the plan's integers do not fit {qt.precision.bits} bits once the converter's negative factor is folded in"
            )
        at = locate(f)
        t = None if at is None else sg.tensors[at]
        qp = None if t is None else t.quantization
        if at is None or t is None or qp is None or qp.scale is None:
            raise ConvertError(f"'{f.tensor}': ai-edge-quantizer stored no integer weight here to replace")
        n = len(qp.scale)
        if n == 1:
            if not np.allclose(s, s.flat[0], rtol=1e-6):
                raise ConvertError(f"'{f.tensor}': the plan has one scale per channel, the TFLite tensor one for all")
            scales = np.asarray([s.flat[0]], np.float32)
        else:
            axis = int(qp.quantizedDimension)
            scales = np.moveaxis(s, axis, 0).reshape(n, -1)
            if not np.allclose(scales, scales[:, :1], rtol=1e-6):
                raise ConvertError(
                    f"'{f.tensor}': the plan's channel axis is not the TFLite tensor's quantized dimension {axis}; use a round-to-nearest plan"
                )
            scales = scales[:, 0].astype(np.float32)
        if biases:
            _requantize_biases(m, at, np.asarray(qp.scale, np.float64), scales, ops, types, requantized)
        qp.scale = scales
        qp.zeroPoint = np.zeros(n, np.int64)
        data = _pack4(q) if qt.precision.bits == 4 else q.astype(np.int8).ravel().view(np.uint8)
        b = m.buffers[t.buffer]
        if b.data is None or len(b.data) != data.size:
            raise ConvertError(
                f"'{f.tensor}': the TFLite weight holds {0 if b.data is None else len(b.data)} bytes, the plan's integers {data.size}"
            )
        b.data = data
    builder = flatbuffers.Builder(len(buf) + 1024)
    builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
    return bytes(builder.Output())


def stored_values(m: Any, index: int, types: dict[int, str]) -> np.ndarray:
    """The values an integer TFLite tensor of ``m`` stands for: its integers (INT4 unpacked) times its scales."""
    from .readback import unpack4

    t = m.subgraphs[0].tensors[index]
    raw = np.asarray(m.buffers[t.buffer].data, np.uint8)
    shape = tuple(int(d) for d in t.shape)
    n = int(np.prod(shape))
    q = unpack4(raw.tobytes(), n, signed=True) if types.get(t.type) == "INT4" else raw.view(np.int8).astype(np.int16)[:n]
    s = np.asarray(t.quantization.scale, np.float32)
    if s.size > 1:
        bshape = [1] * len(shape)
        bshape[int(t.quantization.quantizedDimension)] = -1
        s = s.reshape(bshape)
    return q.reshape(shape).astype(np.float32) * s


def against_plan(
    buf: bytes, matched: list[Any], integers: dict[str, QuantizedTensor] | None, checks: list[Any], rounding: str
) -> list[Any]:
    """``checks`` (`TensorCheck` per planned tensor) with every weight whose stored values (integers x scales, over
    all its pieces, as a multiset: the layout is the converter's) are not the plan's marked "(integers differ from the
    plan's <rounding> rounding)"; unchanged without plan integers (round-to-nearest)."""
    if not integers:
        return checks
    from .litert import names, schema

    fb = schema()
    ops, types = names(fb)
    m = fb.ModelT.InitFromPackedBuf(buf, 0)
    locate = weight_locator(m, ops)
    got: dict[str, list[np.ndarray]] = {}
    for f in matched:
        if not f.is_weight or f.precision.kind != "int" or f.tensor not in integers:
            continue
        at = locate(f)
        t = None if at is None else m.subgraphs[0].tensors[at]
        if at is None or t is None or t.quantization is None or t.quantization.scale is None:
            got.setdefault(f.tensor, []).append(np.full(1, np.nan, np.float32))
            continue
        got.setdefault(f.tensor, []).append(stored_values(m, at, types).ravel() / np.float32(f.factor))
    bad = set()
    for name, parts in got.items():
        want = np.sort(integers[name].dequantize().ravel())
        have = np.sort(np.concatenate(parts))
        tol = 1e-7 * float(np.max(np.abs(want)) or 1.0)
        if want.shape != have.shape or not np.allclose(have, want, rtol=1e-5, atol=tol):
            bad.add(name)
    return [
        c.model_copy(update={"found": f"{c.found} (integers differ from the plan's {rounding} rounding)", "match": False})
        if c.name in bad
        else c
        for c in checks
    ]
