"""Load a forecaster as an ONNX graph and expose its float weights (the black-box view).

ONNX is the one internal representation: a torch module is exported once, here, and from then
on every stage works on the ONNX bytes. Weights are the float initializers; no module tree is
needed, so frozen exports with fused operators work the same way.
"""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .quantize import Layout

from ..errors import BadInputError, BadModelError

FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto enum -> dtype


@dataclass(frozen=True)
class TensorInfo:
    """Name, shape (None for a symbolic dimension) and dtype of a graph input or output."""

    name: str
    shape: tuple[int | None, ...]
    dtype: str

    def describe(self) -> str:
        dims = ", ".join("?" if d is None else str(d) for d in self.shape)
        return f"{self.name}[{dims}]"


@dataclass(frozen=True)
class Weight:
    """One float initializer: the unit TQS perturbs and the planner quantizes.

    ``label`` is what a user reads (the exporter's module scope and the op that reads it, see
    `edgetqs.core.weights.readable`); ``path`` is the dotted module path block granularity groups by."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    label: str = ""
    path: str = ""

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass(frozen=True)
class Constant:
    """A float initializer that is not a weight (a mask, an index range, zeros...): never scored or
    quantized, stored exactly; ``reason`` says why (`edgetqs.core.weights.constant_reason` or a user's rule)."""

    name: str
    shape: tuple[int, ...]
    label: str
    reason: str

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


class Model:
    """An ONNX forecaster: its bytes, inputs/outputs and float weights.

    Args:
        proto: the loaded ``onnx.ModelProto``.
        path: where it came from (for messages and the sha256 in result files).
        min_weight_size: initializers with fewer elements are not weights. Rank-0 float
            initializers are always constants of the graph (epsilons, scales of fused ops), never weights.
        include, exclude: a user's rules (exact name or ``re:REGEX``, matched against the raw name and the
            readable path): ``include`` makes a tensor the rules call a constant a weight, ``exclude`` keeps
            a tensor out of the weights whatever the rules say (`edgetqs.core.weights`).

    Raises:
        BadModelError: a weight holds NaN (or infinities where a MatMul/Gemm/Conv reads its weight); the
            message names it and says how to keep it as a constant.
        BadInputError: a rule that matches no float initializer, or that includes a non-finite tensor.
    """

    def __init__(
        self, proto: Any, path: Path | None = None, min_weight_size: int = 1, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()
    ) -> None:
        import onnx
        from onnx import numpy_helper

        self.proto = proto
        self.path = path
        self.name = path.stem if path else "model"  # a project file may give a better one
        self.bytes = proto.SerializeToString()
        self.sha256 = hashlib.sha256(self.bytes).hexdigest()
        self._min_size = min_weight_size
        graph = proto.graph
        init_names = {i.name for i in graph.initializer}
        self.inputs = [_info(v) for v in graph.input if v.name not in init_names]
        self.outputs = [_info(v) for v in graph.output]
        self._arrays: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            if init.data_type not in FLOAT_TYPES:
                continue
            arr = numpy_helper.to_array(init)
            if arr.ndim == 0 or arr.size < min_weight_size:
                continue
            self._arrays[init.name] = arr
        self.include, self.exclude = tuple(include), tuple(exclude)
        self.weights, self.constants = self._classify()
        self._labels = {c.name: c.label for c in self.constants} | {w.name: w.label or w.name for w in self.weights}
        for c in self.constants:
            del self._arrays[c.name]
        # the first node consuming each weight decides its layout (output channels, reduction axis)
        self._consumer: dict[str, tuple[str, int, dict]] = {}
        for node in graph.node:
            for j, name in enumerate(node.input):
                if name in self._arrays and name not in self._consumer:
                    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name in ("transA", "transB")}
                    self._consumer[name] = (node.op_type, j, attrs)

    def _classify(self) -> tuple[list[Weight], list[Constant]]:
        """Weights and constants among the float initializers (`edgetqs.core.weights`), the user's rules applied."""
        from .weights import check_rules, constant_reason, readable, rule_matches, shape_only_values, uses_of

        inc, exc = check_rules(self.include, "--include"), check_rules(self.exclude, "--exclude")
        graph = self.proto.graph
        uses = uses_of(graph, self._arrays)
        shape_only = shape_only_values(graph)
        weights: list[Weight] = []
        constants: list[Constant] = []
        used: set[str] = set()
        for name, arr in self._arrays.items():
            label, path = readable(name, uses[name])
            shape = tuple(int(d) for d in arr.shape)
            reason = constant_reason(arr, uses[name], name in shape_only)
            x = next((r for r in exc if rule_matches(r, name, path)), None)
            i = next((r for r in inc if rule_matches(r, name, path)), None)
            used.update(r for r in (x, i) if r)
            if x is not None:
                constants.append(Constant(name, shape, label, f"excluded by --exclude {x}"))
                continue
            if reason in ("nan", "inf-weight"):
                what = "NaN" if reason == "nan" else "infinite"
                bad = int((np.isnan(arr) if reason == "nan" else ~np.isfinite(arr)).sum())
                raise BadModelError(
                    f"weight '{name}' ({label}) holds {bad:,} {what} value(s) among {arr.size:,}; a learned weight must be finite: "
                    f"re-export the model, or pass --exclude {name} to keep it as a constant (stored exactly, never scored)"
                )
            if reason is not None and i is not None:
                if not np.isfinite(arr).all():
                    raise BadInputError(
                        f"--include {i} names '{name}', which holds infinite values (a mask): it cannot be perturbed or quantized"
                    )
                reason = None
            if reason is None:
                weights.append(Weight(name, shape, str(arr.dtype), label, path))
            else:
                constants.append(Constant(name, shape, label, reason))
        unused = [r for r in (*inc, *exc) if r not in used]
        if unused:
            sample = ", ".join(list(self._arrays)[:4])
            raise BadInputError(
                f"--include/--exclude rule(s) {unused} match no float initializer of the model (e.g. {sample}); "
                "give raw names, readable paths or re:REGEX"
            )
        return weights, constants

    def select(self, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Model:
        """The same model with other ``--include`` / ``--exclude`` rules (self when they are the same)."""
        if tuple(include) == self.include and tuple(exclude) == self.exclude:
            return self
        other = Model(self.proto, self.path, self._min_size, include=tuple(include), exclude=tuple(exclude))
        other.name = self.name
        return other

    def label(self, name: str) -> str:
        """The readable name of a weight or constant (the raw name when it has none)."""
        return self._labels.get(name, name)

    def constant_array(self, name: str) -> np.ndarray:
        """The stored value of any initializer (a constant's too)."""
        from onnx import numpy_helper

        init = next((i for i in self.proto.graph.initializer if i.name == name), None)
        if init is None:
            raise KeyError(name)
        return numpy_helper.to_array(init)

    def weight_array(self, name: str) -> np.ndarray:
        """The stored value of a weight (read-only view)."""
        return self._arrays[name]

    def consumer(self, name: str) -> tuple[str, int, dict]:
        """(op type, input index, transA/transB) of the first node that consumes a weight."""
        return self._consumer.get(name, ("default", 0, {}))

    def op_type(self, name: str) -> str:
        """Op type of the node that consumes a weight (``default`` when none does)."""
        return self._consumer.get(name, ("default", 0, {}))[0]

    def role(self, name: str) -> str:
        """``Conv.bias`` / ``Gemm.bias`` for bias inputs, else the consuming op type: the key that
        target files use to say which precisions a runtime executes."""
        op, idx, _ = self._consumer.get(name, ("default", 0, {}))
        return f"{op}.bias" if op in ("Conv", "Gemm", "ConvTranspose") and idx == 2 else op

    def layout(self, name: str) -> Layout:
        """Output-channel and reduction axes of a weight, from the op that consumes it."""
        from .quantize import Layout

        op, idx, attrs = self._consumer.get(name, ("", 0, {}))
        nd = self._arrays[name].ndim
        if nd < 2:
            return Layout(0, None)
        if op == "Conv" and idx == 1:
            return Layout(0, 1)
        if op == "ConvTranspose" and idx == 1:
            return Layout(1, 0)
        if op == "Gemm" and idx == 1:
            return Layout(0, 1) if attrs.get("transB", 0) else Layout(1, 0)
        if op == "Gemm" and idx == 0:
            return Layout(1, 0) if attrs.get("transA", 0) else Layout(0, 1)
        if op == "MatMul" and idx == 1:
            return Layout(nd - 1, nd - 2)
        if op == "MatMul" and idx == 0:
            return Layout(nd - 2, nd - 1)
        if op == "Gather" and idx == 0:
            return Layout(0, 1)
        return Layout(0, None)

    @property
    def fixed_bytes(self) -> int:
        """Bytes of initializers that are not weights (shapes, indices, scalars): stored as they are."""
        from onnx import numpy_helper

        names = set(self._arrays)
        return sum(numpy_helper.to_array(i).nbytes for i in self.proto.graph.initializer if i.name not in names)

    @property
    def n_params(self) -> int:
        return sum(w.size for w in self.weights)

    def overridable_bytes(self, names: list[str] | None = None) -> bytes:
        """The model with the given initializers (default: all weights) declared as graph inputs.

        onnxruntime treats an initializer that is also a graph input as a default that a feed
        may override, so one session serves a whole sweep: no rebuild per perturbed group.
        """
        import onnx
        from onnx import helper

        proto = onnx.ModelProto()
        proto.CopyFrom(self.proto)
        names = [w.name for w in self.weights] if names is None else names
        existing = {i.name for i in proto.graph.input}
        by_name = {i.name: i for i in proto.graph.initializer}
        for n in names:
            if n in existing:
                continue
            init = by_name[n]
            proto.graph.input.append(helper.make_tensor_value_info(n, init.data_type, list(init.dims)))
        if proto.ir_version < 4:
            proto.ir_version = 4
        return proto.SerializeToString()

    def with_weights(self, new: dict[str, np.ndarray]) -> bytes:
        """The model bytes with some initializers replaced (baked in as constants).

        Patches the shared proto in place and restores it, so a large model is not copied per call.
        """
        from onnx import numpy_helper

        saved = []
        for init in self.proto.graph.initializer:
            if init.name in new:
                old = type(init)()
                old.CopyFrom(init)
                saved.append((init, old))
                init.CopyFrom(numpy_helper.from_array(np.asarray(new[init.name], dtype=self._arrays[init.name].dtype), init.name))
        try:
            return self.proto.SerializeToString()
        finally:
            for init, old in saved:
                init.CopyFrom(old)


def _info(v: Any) -> TensorInfo:
    t = v.type.tensor_type
    dims: list[int | None] = []
    for d in t.shape.dim:
        dims.append(int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None)
    dtype = str(np.dtype(FLOAT_TYPES.get(t.elem_type, np.float32)))
    return TensorInfo(v.name, tuple(dims), dtype)


def load_model(path: str | Path, min_weight_size: int = 1, include: tuple[str, ...] = (), exclude: tuple[str, ...] = ()) -> Model:
    """Read an ONNX file and check that it has something to score.

    Args:
        include, exclude: the user's weight rules (see `Model`).

    Raises:
        BadInputError: the file does not exist, or a rule matches nothing.
        BadModelError: not an ONNX model, no float weights, or a weight holding NaN.
    """
    import onnx

    from .files import input_file

    p = input_file(path, "model file", "give the path of an .onnx file")
    try:
        proto = onnx.load(str(p), load_external_data=True)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types on garbage
        raise BadModelError(
            f"'{p}' is not a readable ONNX model ({type(exc).__name__}); export it with torch.onnx.export or check the file"
        ) from None
    if len(proto.graph.node) == 0 or not proto.graph.output:
        raise BadModelError(f"'{p}' is not an ONNX model with a graph (no nodes or outputs); check the file")
    model = Model(proto, p, min_weight_size=min_weight_size, include=tuple(include), exclude=tuple(exclude))
    if not model.weights:
        if model.constants:
            raise BadModelError(
                f"every float initializer of '{p}' is a constant ({', '.join(f'{c.name}: {c.reason}' for c in model.constants[:3])}); "
                "pass --include NAME (or re:REGEX) for the ones that are learned weights"
            )
        raise BadModelError(
            f"'{p}' has no float weight initializers (tensors of rank >= 1); "
            "TQS perturbs float weights, so there is nothing to score (was it exported with weights as inputs?)"
        )
    return model


def export_torch(module: Any, example_input: Any, path: str | Path, dynamic_batch: bool = True) -> Path:
    """Export a torch module once to ONNX (dynamo exporter), batch axis dynamic when possible.

    Args:
        module: a ``torch.nn.Module`` in eval mode.
        example_input: a tensor or tuple of tensors with batch axis first.
        path: where to write the ``.onnx`` file.
        dynamic_batch: mark axis 0 of every input as dynamic so contexts can be batched.

    Returns:
        The path written.
    """
    try:
        import torch
    except ImportError:
        from ..errors import OptionalDependencyError

        raise OptionalDependencyError("torch", "torch", "exporting a torch model") from None
    args = example_input if isinstance(example_input, tuple) else (example_input,)
    module = module.eval()
    dynamic_shapes = None
    if dynamic_batch:
        batch = torch.export.Dim("batch", min=1, max=4096)
        dynamic_shapes = tuple({0: batch} for _ in args)
    import shutil

    from .files import Policy, make_work_dir, preflight

    out = Path(path)
    preflight(out, policy=Policy.REPLACE)  # a folder, device or fifo there is refused before the export
    onnx_program = torch.onnx.export(module, args, dynamo=True, dynamic_shapes=dynamic_shapes, optimize=True, verbose=False)
    if onnx_program is None:  # the dynamo exporter always returns a program; the legacy one would write a file
        raise BadModelError("torch.onnx.export returned no ONNX program; export the model to .onnx yourself and pass the file")
    work = make_work_dir(out.parent, f".{out.name}.export-")  # private: the exporter writes there, then one rename
    try:
        onnx_program.save(str(work / out.name))
        for f in sorted(work.iterdir(), key=lambda f: f.name == out.name):  # external data first, the model last
            preflight(out.parent / f.name, policy=Policy.REPLACE)
            os.replace(f, out.parent / f.name)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out
