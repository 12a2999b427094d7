"""Quantizers in numpy, from the weights alone: one place for the numbers every stage needs.

The `quant` TQS probe uses the residual, the planner uses residuals and packed sizes, and the
converters realise the same rounding. A `Precision` is written as ``fp32``, ``fp16``, ``int32``
or ``int{2..8}[-tensor|-channel|-block{N}]`` (``int8`` alone means per channel).

Symmetric round-to-nearest: scale = max|w| / (2^(b-1) - 1) per tensor, per output channel, or per
block of N consecutive weights along the reduction (input) axis within an output channel — the
layout of ONNX ``DequantizeLinear(block_size=N)`` and ``MatMulNBits``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Literal

import numpy as np

from .errors import BadInputError

Granularity = Literal["tensor", "channel", "block"]
Runtime = Literal["ort", "ort-mobile", "tflite", "tflm"]
RUNTIMES: tuple[str, ...] = ("ort", "ort-mobile", "tflite", "tflm")

_PAT = re.compile(r"^(?:(fp32|fp16|int32)|int([2-8])(?:-(tensor|channel|block(\d+)))?)$")


@dataclass(frozen=True, order=True)
class Precision:
    """How one tensor is stored: float (32/16 bits) or symmetric integer with its scale layout."""

    kind: Literal["float", "int"]
    bits: int
    granularity: Granularity | None = None
    block_size: int | None = None

    @property
    def name(self) -> str:
        if self.kind == "float":
            return f"fp{self.bits}"
        if self.bits == 32:
            return "int32"
        g = f"block{self.block_size}" if self.granularity == "block" else self.granularity
        return f"int{self.bits}-{g}"

    def __str__(self) -> str:
        return self.name


def parse_precision(text: str) -> Precision:
    """``int4-block32`` -> Precision.

    Raises:
        BadInputError: not of the form fp32, fp16, int32 or int{2..8}[-tensor|-channel|-block{N}].
    """
    m = _PAT.match(text.strip().lower())
    if not m:
        raise BadInputError(f"precision '{text}'; expected fp32, fp16, int32 or int{{2..8}}[-tensor|-channel|-block{{N}}], e.g. int4-block32")
    if m.group(1):
        word = m.group(1)
        return Precision("float", int(word[2:])) if word.startswith("fp") else Precision("int", 32, "tensor")
    bits = int(m.group(2))
    gran = m.group(3) or "channel"
    if gran.startswith("block"):
        size = int(m.group(4))
        if size < 2:
            raise BadInputError(f"precision '{text}': block size {size}; expected >= 2")
        return Precision("int", bits, "block", size)
    return Precision("int", bits, gran)  # type: ignore[arg-type]


FP32 = Precision("float", 32)
FP16 = Precision("float", 16)


@dataclass(frozen=True)
class Layout:
    """Where a weight's output channels and its reduction axis lie (from the op that consumes it)."""

    out_axis: int = 0
    in_axis: int | None = None


def effective(p: Precision, shape: tuple[int, ...], layout: Layout) -> Precision:
    """The precision a tensor actually gets: a 1-D tensor has no channels to scale apart (one scale
    per element would outweigh the weights), and blocks need a reduction axis."""
    if p.kind == "float" or p.bits == 32:
        return p
    if len(shape) <= 1 and p.granularity != "tensor":
        return Precision("int", p.bits, "tensor")
    if p.granularity == "block" and layout.in_axis is None:
        return Precision("int", p.bits, "channel")
    return p


def _scale_view(x: np.ndarray, p: Precision, layout: Layout) -> tuple[np.ndarray, tuple]:
    """Reshape so that max over the last axis gives one scale per group; and how to undo it."""
    if p.granularity == "tensor" or x.ndim == 0:
        return x.reshape(1, -1), ("tensor", x.shape)
    if p.granularity == "channel":
        moved = np.moveaxis(x, layout.out_axis, 0)
        return moved.reshape(moved.shape[0], -1), ("channel", moved.shape)
    # block: contiguous runs of block_size along the reduction axis, separately for every other position
    ax = layout.in_axis if layout.in_axis is not None else x.ndim - 1
    moved = np.moveaxis(x, ax, -1)
    k = moved.shape[-1]
    pad = (-k) % p.block_size
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, pad)])
    return padded.reshape(-1, p.block_size), ("block", moved.shape, pad, ax)


def _undo(q: np.ndarray, how: tuple, shape: tuple[int, ...], layout: Layout) -> np.ndarray:
    if how[0] == "tensor":
        return q.reshape(shape)
    if how[0] == "channel":
        return np.moveaxis(q.reshape(how[1]), 0, layout.out_axis)
    _, mshape, pad, ax = how
    padded = q.reshape(mshape[:-1] + (mshape[-1] + pad,))
    return np.moveaxis(padded[..., : mshape[-1]], -1, ax)


def fake_quant(w: np.ndarray, p: Precision, layout: Layout = Layout()) -> np.ndarray:
    """Quantize-dequantize: the values the runtime will compute with, same shape and dtype as ``w``."""
    p = effective(p, w.shape, layout)
    if p.kind == "float":
        if p.bits == 16:
            with np.errstate(over="ignore"):  # values beyond 65504 become inf: `residual_rms` reports it
                return w.astype(np.float16).astype(w.dtype)
        return w.copy()
    if p.bits == 32:  # int32 biases of full-integer models: scale tiny enough to be exact at float32
        return w.copy()
    x = np.asarray(w, dtype=np.float64)
    view, how = _scale_view(x, p, layout)
    qmax = 2 ** (p.bits - 1) - 1
    amax = np.abs(view).max(axis=1, keepdims=True)
    scale = np.where(amax > 0, amax / qmax, 1.0)
    q = np.clip(np.round(view / scale), -qmax - 1, qmax) * scale
    return _undo(q, how, x.shape, layout).astype(w.dtype)


def quantize_rtn(w: np.ndarray, bits: int, granularity: Granularity = "channel", block_size: int = 32,
                 layout: Layout = Layout()) -> np.ndarray:
    """Shorthand for `fake_quant` with an integer precision."""
    if not 2 <= bits <= 8:
        raise ValueError(f"bits={bits}; expected 2..8")
    return fake_quant(w, Precision("int", bits, granularity, block_size if granularity == "block" else None), layout)


def n_scales(shape: tuple[int, ...], p: Precision, layout: Layout = Layout()) -> int:
    p = effective(p, shape, layout)
    if p.kind == "float" or p.bits == 32:
        return 0
    if p.granularity == "tensor" or len(shape) == 0:
        return 1
    if p.granularity == "channel":
        return int(shape[layout.out_axis])
    ax = layout.in_axis if layout.in_axis is not None else len(shape) - 1
    others = int(np.prod([d for i, d in enumerate(shape) if i != ax], dtype=np.int64))
    return others * -(-shape[ax] // p.block_size)


def packed_bytes(shape: tuple[int, ...], p: Precision, layout: Layout = Layout(), runtime: str = "ort") -> int:
    """Bytes the runtime stores for this tensor: packed weights + scales (+ zero points).

    ONNX Runtime: sub-byte integers packed two (int4) or four (int2) to a byte, float32 scales, no
    zero points (symmetric). TFLite / TFLite-Micro: float32 scale and int64 zero point per channel
    in the flatbuffer's quantization parameters.
    """
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    p = effective(p, shape, layout)
    if p.kind == "float":
        return n * p.bits // 8
    if p.bits == 32:
        return 4 * n + (12 if runtime in ("tflite", "tflm") else 0)
    per_scale = 12 if runtime in ("tflite", "tflm") else 4
    return -(-n * p.bits // 8) + n_scales(shape, p, layout) * per_scale


def residual_rms(w: np.ndarray, p: Precision, layout: Layout = Layout()) -> float:
    """RMS(Q_p(W) - W) over the tensor; inf when the precision cannot represent it (fp16 beyond 65504)."""
    d = fake_quant(w, p, layout).astype(np.float64) - w
    return float(np.sqrt(np.mean(np.square(d)))) if d.size else 0.0
