"""Quantizers in numpy, from the weights alone: one place for the numbers every stage needs.

The `quant` TQS probe uses the residual, the planner uses residuals and packed sizes, and the
converters realise the same rounding. A `Precision` is written as ``fp32``, ``fp16``, ``int32``
or ``int{2..8,16}[-tensor|-channel|-block{N}]`` (``int8`` alone means per channel; ``int16`` is what
full-integer TFLite-Micro models with int16 activations store elementwise constants in).

Symmetric round-to-nearest: scale = max|w| / (2^(b-1) - 1) per tensor, per output channel, or per
block of N consecutive weights along the reduction (input) axis within an output channel — the
layout of ONNX ``DequantizeLinear(block_size=N)`` and ``MatMulNBits``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np

from ..errors import BadInputError

Granularity = Literal["tensor", "channel", "block"]

PRECISION_PATTERN = r"^(?:(fp32|fp16|int32)|int(16|[2-8])(?:-(tensor|channel|block(\d+)))?)$"
_PAT = re.compile(PRECISION_PATTERN)


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

    @property
    def is_float(self) -> bool:
        return self.kind == "float"

    @property
    def stays_float(self) -> bool:
        """fp32, or a full-integer model's int32 bias: a float graph keeps these in fp32."""
        return self.bits == 32

    @classmethod
    def __get_pydantic_core_schema__(cls, source: Any, handler: Any) -> Any:
        """In result and config files a precision is its name (``int4-block32``), parsed and checked on load."""
        from pydantic_core import core_schema

        def coerce(v: object) -> Precision:
            if isinstance(v, Precision):
                return v
            if isinstance(v, str):
                try:
                    return parse_precision(v)
                except BadInputError as exc:
                    raise ValueError(str(exc)) from None
            raise ValueError(f"expected a precision name such as int8-channel, got {v!r}")

        return core_schema.no_info_plain_validator_function(
            coerce, serialization=core_schema.plain_serializer_function_ser_schema(lambda p: p.name)
        )

    @classmethod
    def __get_pydantic_json_schema__(cls, core: Any, handler: Any) -> dict[str, Any]:
        return {"type": "string", "pattern": PRECISION_PATTERN, "description": "a precision, e.g. fp16, int8-channel, int4-block32"}


def parse_precision(text: str) -> Precision:
    """``int4-block32`` -> Precision.

    Raises:
        BadInputError: not of the form fp32, fp16, int32 or int{2..8,16}[-tensor|-channel|-block{N}].
    """
    m = _PAT.match(text.strip().lower())
    if not m:
        raise BadInputError(
            f"precision '{text}'; expected fp32, fp16, int32 or int{{2..8,16}}[-tensor|-channel|-block{{N}}], e.g. int4-block32"
        )
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
    if p.granularity == "channel" and shape[layout.out_axis] in (1, int(np.prod(shape))):
        # one channel is one scale; one element per channel (a recurrent bias [1, 6H] by gate row) would
        # store a scale per weight: both are per tensor
        return Precision("int", p.bits, "tensor")
    if p.granularity == "block" and layout.in_axis is None:
        return Precision("int", p.bits, "channel")
    return p


@dataclass(frozen=True)
class QuantizedTensor:
    """Integers and scales in ONNX ``DequantizeLinear`` layout: tensor (scalar scale), channel
    (scale [C] along ``axis``), block (scale shaped like q with ``axis`` shrunk to ceil(K / block_size))."""

    q: np.ndarray  # int8 values within [-2^(b-1), 2^(b-1) - 1]
    scale: np.ndarray  # float32
    axis: int | None
    block_size: int | None
    precision: Precision

    def dequantize(self) -> np.ndarray:
        s = self.scale.astype(np.float32)
        if self.precision.granularity == "channel" and self.axis is not None:
            shape = [1] * self.q.ndim
            shape[self.axis] = -1
            s = s.reshape(shape)
        elif self.precision.granularity == "block" and self.axis is not None and self.block_size is not None:
            s = np.repeat(s, self.block_size, axis=self.axis)
            s = np.take(s, np.arange(self.q.shape[self.axis]), axis=self.axis)
        return self.q.astype(np.float32) * s


def quantize_int(w: np.ndarray, p: Precision, layout: Layout = Layout()) -> QuantizedTensor:
    """Symmetric round-to-nearest integers and scales: the numbers every converter stores."""
    p = effective(p, w.shape, layout)
    if p.kind != "int" or p.bits > 16:
        raise ValueError(f"quantize_int needs int2..int8 or int16, got {p.name}")
    x = np.asarray(w, dtype=np.float64)
    qmax = 2 ** (p.bits - 1) - 1
    qdt = np.int16 if p.bits > 8 else np.int8

    def scales(amax: np.ndarray) -> np.ndarray:
        # float32 first: the runtime multiplies by the stored float32 scale, so round with it too
        return np.where(amax > 0, amax / qmax, 1.0).astype(np.float32).astype(np.float64)

    if p.granularity == "tensor" or x.ndim == 0:
        sc = scales(np.abs(x).max(keepdims=True) if x.size else np.ones(1))
        q = np.clip(np.round(x / sc), -qmax - 1, qmax)
        return QuantizedTensor(q.astype(qdt), sc.reshape(()).astype(np.float32), None, None, p)
    if p.granularity == "channel":
        ax = layout.out_axis
        moved = np.moveaxis(x, ax, 0)
        sc = scales(np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1))
        shape = [1] * x.ndim
        shape[ax] = -1
        q = np.clip(np.round(x / sc.reshape(shape)), -qmax - 1, qmax)
        return QuantizedTensor(q.astype(qdt), sc.astype(np.float32), ax, None, p)
    ax = layout.in_axis if layout.in_axis is not None else x.ndim - 1
    bs = p.block_size
    moved = np.moveaxis(x, ax, -1)
    k = moved.shape[-1]
    nb = -(-k // bs)
    padded = np.pad(moved, [(0, 0)] * (moved.ndim - 1) + [(0, nb * bs - k)])
    blocks = padded.reshape(moved.shape[:-1] + (nb, bs))
    sc = scales(np.abs(blocks).max(axis=-1))  # [..., nb]
    q = np.clip(np.round(blocks / sc[..., None]), -qmax - 1, qmax).reshape(moved.shape[:-1] + (nb * bs,))[..., :k]
    return QuantizedTensor(np.moveaxis(q, -1, ax).astype(qdt), np.moveaxis(sc, -1, ax).astype(np.float32), ax, bs, p)


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
    return quantize_int(w, p, layout).dequantize().astype(w.dtype)


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
    return others * -(-shape[ax] // (p.block_size or 1))


@dataclass(frozen=True)
class Storage:
    """How a runtime stores quantized tensors: bytes per scale (zero point included) and per element
    of a wide integer (the int32 biases of full-integer kernels; int64 under int16 activations)."""

    scale_bytes: int = 4
    wide_int_bytes: int = 4
    wide_int_overhead: int = 0  # quantization parameters a wide integer tensor carries
    pad_int4_blocks: bool = False  # 4-bit blocks stored whole (MatMulNBits): a reduction axis shorter than a block is padded


ONNX_STORAGE = Storage()


def packed_bytes(shape: tuple[int, ...], p: Precision, layout: Layout = Layout(), storage: Storage = ONNX_STORAGE) -> int:
    """Bytes the runtime stores for this tensor: packed weights + scales (+ zero points).

    Sub-byte integers are packed two (int4) or four (int2) to a byte. What a scale costs depends on the
    runtime (`Storage`: ONNX Runtime stores float32 scales and no zero points for symmetric integers;
    TFLite a float32 scale and an int64 zero point per channel in the flatbuffer)."""
    n = int(np.prod(shape, dtype=np.int64)) if shape else 1
    p = effective(p, shape, layout)
    if p.kind == "float":
        return n * p.bits // 8
    if p.bits == 32:
        return storage.wide_int_bytes * n + storage.wide_int_overhead
    if storage.pad_int4_blocks and p.bits == 4 and p.granularity == "block" and p.block_size:
        ax = layout.in_axis if layout.in_axis is not None else len(shape) - 1
        n = n // shape[ax] * -(-shape[ax] // p.block_size) * p.block_size  # K rounded up to whole blocks
    return -(-n * p.bits // 8) + n_scales(shape, p, layout) * storage.scale_bytes


def residual_rms(w: np.ndarray, p: Precision, layout: Layout = Layout()) -> float:
    """RMS(Q_p(W) - W) over the tensor; inf when the precision cannot represent it (fp16 beyond 65504)."""
    d = fake_quant(w, p, layout).astype(np.float64) - w
    return float(np.sqrt(np.mean(np.square(d)))) if d.size else 0.0
