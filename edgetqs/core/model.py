"""Load a forecaster as an ONNX graph and expose its float weights (the black-box view).

ONNX is the one internal representation: a torch module is exported once, here, and from then
on every stage works on the ONNX bytes. Weights are the float initializers; no module tree is
needed, so frozen exports with fused operators work the same way.
"""

from __future__ import annotations

import builtins
import hashlib
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    from .quantize import Layout

from ..errors import BadInputError, BadModelError

FLOAT_TYPES = {1: np.float32, 10: np.float16, 11: np.float64}  # onnx.TensorProto enum -> dtype
# one protobuf message cannot exceed 2 GiB: larger models keep their weights in external data files, which are
# read straight into the weight arrays; such a model is loaded, hashed and swept without ever being one message
PROTOBUF_LIMIT = 2**31 - 1

# Where a weight's output channels lie, and along which axis it is summed (the reduction axis that blocks
# run along), by the op that consumes it and the input slot it feeds. One table for scoring (the quant
# probe), planning (scales in packed bytes), GPTQ and every converter (per-channel scales along it).
# Each entry: (ndim, attributes) -> (out axis, reduction axis or None).
_RECURRENT = {
    # W[dirs, gates*hidden, input], R[dirs, gates*hidden, hidden]: one row per gate and hidden unit;
    # B[dirs, 2*gates*hidden] (and LSTM's peepholes P[dirs, 3*hidden]): one element per row
    1: lambda nd, a: (1, 2),
    2: lambda nd, a: (1, 2),
    3: lambda nd, a: (1, None),
}
CHANNEL_AXES: dict[tuple[str, int], Any] = {
    ("Conv", 1): lambda nd, a: (0, 1),  # W[M, C/group, k...]
    ("ConvTranspose", 1): lambda nd, a: (1, 0),  # W[C, M/group, k...]
    ("Gemm", 1): lambda nd, a: (0, 1) if a.get("transB", 0) else (1, 0),  # B[N, K] with transB, else [K, N]
    ("Gemm", 0): lambda nd, a: (1, 0) if a.get("transA", 0) else (0, 1),  # A[K, M] with transA, else [M, K]
    ("MatMul", 1): lambda nd, a: (nd - 1, nd - 2),  # B[..., K, N]
    ("MatMul", 0): lambda nd, a: (nd - 2, nd - 1),  # A[..., M, K]
    ("Gather", 0): lambda nd, a: (int(a.get("axis", 0)) % nd, 1 - int(a.get("axis", 0)) % nd if nd == 2 else None),  # embedding rows
    **{(op, slot): rule for op in ("GRU", "LSTM", "RNN") for slot, rule in _RECURRENT.items()},
    ("LSTM", 7): lambda nd, a: (1, None),  # peepholes P[dirs, 3*hidden]
}
LAYOUT_ATTRS = ("transA", "transB", "axis")


def layout_of(op: str, slot: int, ndim: int, attrs: dict[str, Any] | None = None) -> Layout:
    """Output-channel and reduction axes of a weight of rank ``ndim`` fed to input ``slot`` of an ``op``
    node (`CHANNEL_AXES`); a tensor of rank < 2, or one consumed by any other op, scales along axis 0."""
    from .quantize import Layout

    rule = CHANNEL_AXES.get((op, slot))
    if ndim < 2 or rule is None:
        return Layout(0, None)
    out_axis, in_axis = rule(ndim, attrs or {})
    return Layout(out_axis, in_axis)


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
    """An ONNX forecaster: its graph, inputs/outputs and float weights.

    The weights are held once, as numpy arrays (`weight_array`); the graph is kept without their data
    (`skeleton`), so a model costs about 4 bytes per float32 parameter. `proto` and `bytes` (the whole
    model as one message) are built on first use only, by the stages that need them.

    Args:
        proto: the loaded ``onnx.ModelProto``; initializers may be stored in external data files next to ``path``.
        path: where it came from (for messages, external data and the sha256 in result files).
        min_weight_size: initializers with fewer elements are not weights. Rank-0 float
            initializers are always constants of the graph (epsilons, scales of fused ops), never weights.
        arrays: the weights' values, when they are already at hand (a sweep worker maps them from shared
            memory); then exactly these initializers are the weights and ``proto`` may be a `skeleton`.
        sha256: the model's hash, when already known (`load_model` hashes the files as it reads them).
        include, exclude: a user's rules (exact name or ``re:REGEX``, matched against the raw name and the
            readable path): ``include`` makes a tensor the rules call a constant a weight, ``exclude`` keeps
            a tensor out of the weights whatever the rules say (`edgetqs.core.weights`). Not applied with
            ``arrays`` (the coordinator of a sweep already chose the weights).

    Raises:
        BadModelError: a weight holds NaN (or infinities where a MatMul/Gemm/Conv reads its weight); the
            message names it and says how to keep it as a constant.
        BadInputError: a rule that matches no float initializer, or that includes a non-finite tensor.
    """

    def __init__(
        self,
        proto: Any,
        path: Path | None = None,
        min_weight_size: int = 1,
        *,
        arrays: Mapping[str, np.ndarray] | None = None,
        sha256: str | None = None,
        include: tuple[str, ...] = (),
        exclude: tuple[str, ...] = (),
    ) -> None:
        import onnx

        self.path = path
        self.name = path.stem if path else "model"  # a project file may give a better one
        self.sha256 = sha256 or _sha256(proto, path)
        self._min_size = min_weight_size
        graph = proto.graph
        init_names = {i.name for i in graph.initializer}
        self.inputs = [_info(v) for v in graph.input if v.name not in init_names]
        self.outputs = [_info(v) for v in graph.output]
        self._arrays: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            if arrays is not None:
                if init.name not in arrays:
                    continue
                arr = arrays[init.name]
            else:
                if init.data_type not in FLOAT_TYPES:
                    continue
                arr = _read_tensor(init, path)
                if arr.ndim == 0 or arr.size < min_weight_size:
                    continue
            self._arrays[init.name] = arr
        self.include, self.exclude = tuple(include), tuple(exclude)
        if arrays is None:
            self.weights, self.constants = self._classify(graph)
        else:  # a sweep worker: exactly the weights the coordinator chose
            self.weights = [Weight(n, tuple(int(d) for d in a.shape), str(a.dtype)) for n, a in self._arrays.items()]
            self.constants = []
        self._labels = {c.name: c.label for c in self.constants} | {w.name: w.label or w.name for w in self.weights}
        for c in self.constants:  # constants stay inline in the skeleton, stored as they are
            del self._arrays[c.name]
        self.skeleton = _skeleton(proto, set(self._arrays), path)
        # the first node consuming each weight decides its layout (output channels, reduction axis)
        self._consumer: dict[str, tuple[str, int, dict]] = {}
        for node in graph.node:
            for j, name in enumerate(node.input):
                if name in self._arrays and name not in self._consumer:
                    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute if a.name in LAYOUT_ATTRS}
                    self._consumer[name] = (node.op_type, j, attrs)

    def _classify(self, graph: Any) -> tuple[list[Weight], list[Constant]]:
        """Weights and constants among the float initializers (`edgetqs.core.weights`), the user's rules applied."""
        from .weights import check_rules, constant_reason, readable, rule_matches, shape_only_values, uses_of

        inc, exc = check_rules(self.include, "--include"), check_rules(self.exclude, "--exclude")
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
        other = Model(self.proto, self.path, self._min_size, sha256=self.sha256, include=tuple(include), exclude=tuple(exclude))
        other.name = self.name
        return other

    def label(self, name: str) -> str:
        """The readable name of a weight or constant (the raw name when it has none)."""
        return self._labels.get(name, name)

    def constant_array(self, name: str) -> np.ndarray:
        """The stored value of any initializer (a constant's too)."""
        from onnx import numpy_helper

        init = next((i for i in self.skeleton.graph.initializer if i.name == name), None)
        if init is None:
            raise KeyError(name)
        return numpy_helper.to_array(init)

    def weight_array(self, name: str) -> np.ndarray:
        """The stored value of a weight (read-only view)."""
        return self._arrays[name]

    def consumer(self, name: str) -> tuple[str, int, dict]:
        """(op type, input index, the attributes that decide its layout) of the first node that consumes a weight."""
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
        """Output-channel and reduction axes of a weight, from the op that consumes it (`layout_of`)."""
        op, idx, attrs = self._consumer.get(name, ("", 0, {}))
        return layout_of(op, idx, self._arrays[name].ndim, attrs)

    @property
    def fixed_bytes(self) -> int:
        """Bytes of initializers that are not weights (shapes, indices, scalars): stored as they are."""
        from onnx import numpy_helper

        names = set(self._arrays)
        return sum(numpy_helper.to_array(i).nbytes for i in self.skeleton.graph.initializer if i.name not in names)

    @property
    def n_params(self) -> int:
        return sum(w.size for w in self.weights)

    @cached_property
    def proto(self) -> Any:
        """The whole model as one ``onnx.ModelProto``, weights inline (built on first use: converters edit it)."""
        from onnx import numpy_helper

        proto = type(self.skeleton)()
        proto.CopyFrom(self.skeleton)
        for init in proto.graph.initializer:
            if init.name in self._arrays:
                init.CopyFrom(numpy_helper.from_array(np.asarray(self._arrays[init.name]), init.name))
        return proto

    @cached_property
    def bytes(self) -> bytes:
        """The serialized model (built on first use; a model above 2 GiB has none: sessions share `weight_array` instead)."""
        if self.skeleton.ByteSize() + sum(a.nbytes for a in self._arrays.values()) > PROTOBUF_LIMIT:
            raise BadModelError(
                f"'{self.path or self.name}' is larger than 2 GiB, the limit of one ONNX message; this step needs the "
                "model as one file: keep its weights in external data and use a step that reads them from there"
            )
        return bytes(self.proto.SerializeToString())

    def overridable_bytes(self, names: list[str] | None = None) -> builtins.bytes:
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

    def with_weights(self, new: dict[str, np.ndarray]) -> builtins.bytes:
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


def _external(init: Any) -> dict[str, str] | None:
    """The external-data fields of an initializer (location, offset, length), or None when it is inline."""
    from onnx import TensorProto

    if init.data_location != TensorProto.EXTERNAL:
        return None
    return {e.key: e.value for e in init.external_data}


def _read_tensor(init: Any, path: Path | None) -> np.ndarray:
    """An initializer's value; external data is read straight from its file into the array (no protobuf copy)."""
    from onnx import numpy_helper

    ext = _external(init)
    if ext is None:
        return numpy_helper.to_array(init)
    if path is None:
        raise BadModelError(
            f"initializer '{init.name}' keeps its data in '{ext.get('location')}', but the model has no folder to read it from"
        )
    dtype = np.dtype(FLOAT_TYPES[init.data_type]).newbyteorder("<")
    shape = tuple(int(d) for d in init.dims)
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    file = path.parent / ext["location"]
    offset = int(ext.get("offset", 0))
    try:
        arr = np.fromfile(file, dtype=dtype, count=count, offset=offset)
    except OSError as exc:
        raise BadModelError(
            f"cannot read the data of initializer '{init.name}' from '{file}' ({exc}); keep the data file beside the model"
        ) from None
    if arr.size != count:
        raise BadModelError(f"'{file}' holds {arr.size} of the {count} values of initializer '{init.name}'; the data file is truncated")
    return arr.astype(dtype.newbyteorder("="), copy=False).reshape(shape)


def _sha256(proto: Any, path: Path | None) -> str:
    """sha256 of a model given as a message: its serialization, or its files when its weights are external."""
    from onnx import TensorProto

    if path is not None and any(i.data_location == TensorProto.EXTERNAL for i in proto.graph.initializer):
        return _files_sha256(proto, path)
    return hashlib.sha256(proto.SerializeToString()).hexdigest()


def _files_sha256(proto: Any, path: Path) -> str:
    """sha256 of the model's files, read in pieces: the .onnx file, then each external data file in order of first use.

    For a model in one file this is what ``sha256sum model.onnx`` prints (and, for a file written by onnx or torch,
    the sha256 of its serialization that earlier versions recorded), without ever holding a second copy of it."""
    from onnx import TensorProto

    h = hashlib.sha256()
    locations = [(_external(i) or {}).get("location", "") for i in proto.graph.initializer if i.data_location == TensorProto.EXTERNAL]
    for f in [path] + [path.parent / loc for loc in dict.fromkeys(locations)]:
        try:
            with open(f, "rb") as fh:
                while chunk := fh.read(1 << 24):
                    h.update(chunk)
        except OSError as exc:
            raise BadModelError(f"cannot read '{f}' ({exc}); keep the model's external data file(s) beside it") from None
    return h.hexdigest()


def _is_repeated(fd: Any) -> bool:
    return bool(fd.is_repeated) if hasattr(fd, "is_repeated") else fd.label == fd.LABEL_REPEATED


def _copy_fields(dst: Any, src: Any, skip: str) -> None:
    for fd, value in src.ListFields():
        if fd.name == skip:
            continue
        if _is_repeated(fd):
            getattr(dst, fd.name).extend(value)
        elif fd.message_type is not None:
            getattr(dst, fd.name).CopyFrom(value)
        else:
            setattr(dst, fd.name, value)


def _skeleton(proto: Any, weights: set[str], path: Path | None) -> Any:
    """A copy of the model whose weight initializers keep their name, type and shape but no data.

    Built field by field so that the weights' bytes are never copied; other initializers (shapes, indices,
    small constants) stay inline, read from external data if they were stored there."""
    import onnx

    out = onnx.ModelProto()
    _copy_fields(out, proto, "graph")
    _copy_fields(out.graph, proto.graph, "initializer")
    for init in proto.graph.initializer:
        t = out.graph.initializer.add()
        if init.name in weights:
            t.name, t.data_type = init.name, init.data_type
            t.dims.extend(init.dims)
        elif _external(init) is not None:
            t.CopyFrom(onnx.numpy_helper.from_array(_read_external_any(init, path), init.name))
        else:
            t.CopyFrom(init)
    return out


def _read_external_any(init: Any, path: Path | None) -> np.ndarray:
    """A non-weight initializer stored in external data (any type), via onnx's own reader."""
    import onnx
    from onnx import external_data_helper, numpy_helper

    t = onnx.TensorProto()
    t.CopyFrom(init)
    external_data_helper.load_external_data_for_tensor(t, str(path.parent) if path else ".")
    t.data_location = onnx.TensorProto.DEFAULT
    del t.external_data[:]
    return numpy_helper.to_array(t)


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
        BadInputError: the file does not exist.
        BadModelError: not an ONNX model, or no float weights.
    """
    import onnx

    from .files import input_file

    p = input_file(path, "model file", "give the path of an .onnx file")
    try:
        proto = onnx.load(str(p), load_external_data=False)
    except Exception as exc:  # noqa: BLE001 - protobuf raises several unrelated types on garbage
        raise BadModelError(
            f"'{p}' is not a readable ONNX model ({type(exc).__name__}); export it with torch.onnx.export or check the file"
        ) from None
    if len(proto.graph.node) == 0 or not proto.graph.output:
        raise BadModelError(f"'{p}' is not an ONNX model with a graph (no nodes or outputs); check the file")
    model = Model(proto, p, min_weight_size=min_weight_size, sha256=_files_sha256(proto, p), include=tuple(include), exclude=tuple(exclude))
    del proto  # the weights now live in the model's arrays only
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
