"""What an artifact stores, priced before it is written: the planner's byte model per runtime.

ONNX Runtime stores what the plan says, tensor by tensor (`edgetqs.core.quantize.packed_bytes` with the
runtime's `Storage`). A full-integer TFLite file (TFLite-Micro; LiteRT with integer activations) does not:
its converters fold and fuse constants, store every bias as a wide integer whose width follows the
activations (int32 under int8 activations, int64 under the int16x8 kernels), give a bias one scale and
zero point per output channel of its weight when the weight is per channel, store elementwise constants
at the activation width, and keep shape and index vectors as int32. A plan priced from the ONNX graph
alone is wrong by kilobytes (Lorenz-96 for the STM32H743: 16,568 B planned, 21,180 B stored).

So `tflite_pricing` prices from the float TFLite graph the converter itself writes (the same prepared
model, the same onnx2tf and TensorFlow converter, cached on disk so that convert reuses it): each weight
is found in it by content (`edgetqs.runtimes.litert.match_planned`), given a role (the weight input of a
kernel, a bias, an elementwise constant) and priced as full-integer quantization stores that role; every
other constant is priced into ``fixed``. A weight and its bias are coupled: the bias's per-channel
quantization parameters are paid only when the weight is planned per channel, so the knapsack sees them on
the weight's per-channel options and the plan moves them back onto the bias once chosen. The read-back
after conversion compares these figures with the file, tensor by tensor.

One thing is not priced: a bias shared by several kernels (the steps of an unrolled GRU/LSTM/RNN) gets
one integer copy per distinct (input scale x weight scale), which calibration decides; convert.json
says how many bytes such copies added (``facts.shared_bias_copies``).

When the TFLite tools are missing (or for a quick plan), `analytic_pricing` applies the same rules to the
ONNX graph; it cannot see what the converters fold, so its plans say ``exact: false``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from ..core.quantize import Layout, Precision, Storage, effective, packed_bytes

if TYPE_CHECKING:  # pragma: no cover
    from ..core.model import Model

QPARAM_BYTES = 12  # a float32 scale and an int64 zero point per channel, in TFLite flatbuffers
ACT_BYTES = {"int8": 1, "int16": 2}
BIAS_BYTES = {"int8": 4, "int16": 8}  # int32 biases under int8 activations, int64 under int16x8 kernels
# the input position of a bias in TFLite kernels, and the axis of a weight's output channels
BIAS_POS = {"FULLY_CONNECTED": 2, "CONV_2D": 2, "DEPTHWISE_CONV_2D": 2, "CONV_3D": 2, "TRANSPOSE_CONV": 3}
CHANNEL_AXIS = {"FULLY_CONNECTED": 0, "CONV_2D": 0, "DEPTHWISE_CONV_2D": -1, "CONV_3D": -1, "BATCH_MATMUL": -1, "EMBEDDING_LOOKUP": 0}

Role = Literal["weight", "bias", "const"]


@dataclass(frozen=True)
class Slot:
    """One place a weight is stored in a full-integer file: its role, element count and output channels."""

    role: Role
    size: int
    channels: int = 1
    ndim: int = 2


@dataclass
class Pricing:
    """Bytes a runtime stores per weight and precision, and for everything that is not a weight.

    Attributes:
        runtime: the runtime priced.
        activations: float | int8 | int16.
        storage: its scale and wide-integer prices (weight-only and ONNX routes).
        exact: priced from the graph the converter writes (the read-back must agree to the byte).
        source: how, in words.
        slots: weight -> where a full-integer file stores it (None: price with `packed_bytes`).
        fixed: bytes of everything that is not a weight (None: the model's non-weight initializers).
        coupled: weight -> [(its bias's name, or None for a bias that is not a weight), extra bytes the
            bias costs when the weight is per channel].
        notes: what the pricing found worth saying (int16 refused by an op...).
        float_kernels: a kernel whose weight is planned float computes in float with that weight stored as planned
            (LiteRT's full-integer graphs with float islands), and biases and constants are priced at the larger of
            their integer and float32 forms (an upper bound); False: every kernel is integer, exact (TFLite-Micro).
    """

    runtime: str
    activations: str
    storage: Storage
    exact: bool
    source: str
    slots: dict[str, list[Slot]] | None = None
    fixed: int | None = None
    coupled: dict[str, list[tuple[str | None, int]]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    float_kernels: bool = False

    def own_bytes(self, name: str, shape: tuple[int, ...], p: Precision, layout: Layout) -> int:
        """Bytes the file stores for this weight at ``p`` (its own, without what its bias costs)."""
        if self.slots is None:
            return packed_bytes(shape, p, layout, self.storage)
        total = 0
        for s in self.slots.get(name, []):
            if s.role == "weight":
                q = effective(p, (s.channels, max(s.size // max(s.channels, 1), 1)), Layout(0, 1))
                if q.kind == "float" and self.float_kernels:  # a float island: the weight as planned, no scales
                    total += s.size * q.bits // 8
                    continue
                bits = 8 if q.kind == "float" or q.bits >= 32 else q.bits
                total += -(-s.size * bits // 8) + QPARAM_BYTES * (s.channels if q.granularity == "channel" else 1)
            elif s.role == "bias":
                total += self._either(BIAS_BYTES.get(self.activations, 4) * s.size + QPARAM_BYTES, s.size)
            else:
                total += self._either(ACT_BYTES.get(self.activations, 1) * s.size + QPARAM_BYTES, s.size)
        return total

    def _either(self, integer: int, size: int) -> int:
        """A bias or elementwise constant's bytes: as an integer; with ``float_kernels`` the larger of that and
        float32, since the ops around a float kernel keep theirs float (and with every kernel float the artifact is
        the weight-only file): the plan then bounds the file (patch_univariate at int8: 13,500 stored vs 13,482 priced)."""
        return max(integer, 4 * size) if self.float_kernels else integer

    def per_channel(self, name: str, p: Precision) -> bool:
        """Whether the weight's kernel slots are stored per channel at ``p`` (its biases then are too)."""
        slots = [s for s in (self.slots or {}).get(name, []) if s.role == "weight"]
        if not slots or p.kind != "int" or p.bits >= 32:
            return False
        return any(effective(p, (s.channels, max(s.size // max(s.channels, 1), 1)), Layout(0, 1)).granularity == "channel" for s in slots)

    def option_bytes(self, name: str, shape: tuple[int, ...], p: Precision, layout: Layout) -> int:
        """What the knapsack pays for choosing ``p``: the weight's own bytes plus its biases' per-channel parameters."""
        extra = sum(e for _, e in self.coupled.get(name, [])) if self.per_channel(name, p) else 0
        return self.own_bytes(name, shape, p, layout) + extra

    def fixed_bytes(self, model: Model) -> int:
        return model.fixed_bytes if self.fixed is None else self.fixed

    def role(self, name: str) -> Role | None:
        """The role of a weight's first slot (None: not stored as a constant of its own, or not priced by slots)."""
        slots = (self.slots or {}).get(name)
        return slots[0].role if slots else None

    def record(self) -> dict[str, Any]:
        return {
            "runtime": self.runtime,
            "activations": self.activations,
            "exact": self.exact,
            "source": self.source,
            "fixed_bytes": self.fixed,
            "notes": list(self.notes),
        }


def storage_pricing(runtime: str, storage: Storage, activations: str = "float") -> Pricing:
    """Tensor-by-tensor pricing (`packed_bytes`): what the ONNX routes and weight-only TFLite store."""
    return Pricing(runtime, activations, storage, exact=False, source="packed bytes per tensor")


def analytic_pricing(model: Model, runtime: str, activations: str, storage: Storage) -> Pricing:
    """Full-integer pricing from the ONNX graph alone: kernels' weights per channel, Conv/Gemm biases as
    wide integers coupled to their weights, other float constants at the activation width. What the
    converters fold (a multiplier into a weight, shape arithmetic) is not seen: ``exact`` is False."""
    weights = {w.name for w in model.weights}
    slots: dict[str, list[Slot]] = {}
    coupled: dict[str, list[tuple[str | None, int]]] = {}
    for node in model.proto.graph.node:
        w = node.input[1] if len(node.input) > 1 else ""
        b = node.input[2] if len(node.input) > 2 and node.op_type in ("Conv", "Gemm", "ConvTranspose") else ""
        if w in weights and b in weights and w != b:
            n_b = model.weight_array(b).size
            coupled.setdefault(w, []).append((b, QPARAM_BYTES * (n_b - 1)))
    for w in model.weights:
        op, idx, _ = model.consumer(w.name)
        arr = model.weight_array(w.name)
        if (op in ("Conv", "ConvTranspose", "Gemm") and idx == 1) or (op == "MatMul" and idx == 1) or (op == "Gather" and idx == 0):
            ch = int(arr.shape[model.layout(w.name).out_axis]) if arr.ndim >= 2 else 1
            slots[w.name] = [Slot("weight", arr.size, ch, arr.ndim)]
        elif op in ("Conv", "ConvTranspose", "Gemm") and idx == 2:
            slots[w.name] = [Slot("bias", arr.size, 1, arr.ndim)]
        else:
            slots[w.name] = [Slot("const", arr.size, 1, arr.ndim)]
    return Pricing(
        runtime,
        activations,
        storage,
        exact=False,
        source="analytic (ONNX graph; what the TFLite converters fold is not seen)",
        slots=slots,
        coupled=coupled,
    )


def tflite_pricing(model: Model, runtime: str, activations: str, storage: Storage, graph: tuple[Any, Any, Any]) -> Pricing:
    """Exact full-integer pricing from the float TFLite graph the converter writes.

    Args:
        model: the float model (the plan's tensor names).
        runtime: ``tflm`` or ``tflite``.
        activations: int8 | int16.
        storage: the runtime's storage (unused by slots; kept for the record).
        graph: (the `Prepared` model, the float TFLite ``ModelT``, its operator-name table).
    """
    import numpy as np

    from .litert import WEIGHT_OPS, consumers, match_planned, names, op_name, schema

    prep, fm, ops = graph
    sg = fm.subgraphs[0]
    _, types = names(schema())

    from types import SimpleNamespace

    every = SimpleNamespace(tensors=[SimpleNamespace(name=w.name, precision=Precision("int", 8, "channel")) for w in model.weights])
    matches, _ = match_planned(prep, every, fm, sg, ops, skip_fp32=False)
    at = {f.index: f for f in matches}
    readers = consumers(sg)

    def channels(op: Any, idx: int) -> int:
        t = sg.tensors[idx]
        shape = [int(d) for d in t.shape]
        name = op_name(fm, op, ops)
        ax = CHANNEL_AXIS.get(name, 0)
        return shape[ax] if shape else 1

    slots: dict[str, list[Slot]] = {w.name: [] for w in model.weights}
    coupled: dict[str, list[tuple[str | None, int]]] = {}
    fixed = 0
    wide, act = BIAS_BYTES.get(activations, 4), ACT_BYTES.get(activations, 1)
    for idx, t in enumerate(sg.tensors):
        b = fm.buffers[t.buffer]
        if b.data is None or len(b.data) == 0:
            continue
        users = readers.get(idx, [])
        op, pos = users[0] if users else (None, -1)
        kind = op_name(fm, op, ops) if op is not None else ""
        n = int(np.prod([int(d) for d in t.shape])) if len(t.shape) else 1
        if types.get(t.type) != "FLOAT32":
            fixed += len(b.data)  # shape and index vectors: stored as they are
            continue
        match = at.get(idx)
        if op is not None and kind in BIAS_POS and pos == BIAS_POS[kind]:
            role: Role = "bias"
            w_idx = op.inputs[1]
            w_match = at.get(w_idx)
            extra = QPARAM_BYTES * (n - 1)
            if w_match is not None and extra:
                coupled.setdefault(w_match.tensor, []).append((match.tensor if match is not None else None, extra))
            elif extra:
                fixed += extra  # the weight is not planned (a constant the rewrites made): per channel, as quantized by default
        elif WEIGHT_OPS.get(kind) == pos:
            role = "weight"
        else:
            role = "const"
        if match is None:
            # a constant the converter made (folded a multiplier into a weight, summed two biases): quantized
            # as its role says, a kernel's weight per channel (the default recipe)
            fixed += {"bias": wide * n, "const": act * n}.get(role, n) + QPARAM_BYTES
            if role == "weight" and op is not None:
                fixed += QPARAM_BYTES * (channels(op, idx) - 1)
            continue
        ch = channels(op, idx) if role == "weight" and op is not None else 1
        if match.piece != match.tensor and prep.source.layout(match.tensor).out_axis != 1:
            ch = 1  # a gate piece of a recurrent weight planned per channel along its size-1 direction axis: one scale
        slots[match.tensor].append(Slot(role, n, ch, len(t.shape)))
    for w, cs in coupled.items():
        # a bias that is a planned weight takes its per-channel part only when its weight is per channel
        coupled[w] = cs
    return Pricing(
        runtime,
        activations,
        storage,
        exact=True,
        source="the float TFLite graph the converter writes (onnx2tf + TensorFlow's converter), full-integer storage rules",
        slots=slots,
        fixed=fixed,
        coupled=coupled,
    )
