"""Sessions that answer like onnxruntime's (``run(output_names, feeds) -> outputs``) for every runtime.

Shared by the host (conversion checks) and the on-device driver, so this file imports nothing but
numpy and the runtime at hand. TFLite graphs written by the converters have batch 1 (or the model's
fixed batch): the rows of a batch run one (or B) at a time, inputs are transposed NCHW -> NHWC where onnx2tf changed the layout
(and outputs back), and integer inputs/outputs of full-integer models are quantized/dequantized
with the tensor's own scale and zero point.

Each runner's ``io`` arguments describe the ONNX model's inputs and outputs as dicts with ``name`` and
``shape`` (without the batch axis; None for a symbolic size).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

IO = Sequence[dict[str, Any]]


class MissingRuntime(ImportError):
    """The Python module a runtime needs is not installed here."""

    def __init__(self, modules: Sequence[str], what: str) -> None:
        super().__init__(f"{what} needs the Python module {' or '.join(modules)}")
        self.modules = list(modules)


def import_first(names: Sequence[str], what: str) -> Any:
    """The first of ``names`` that imports (e.g. ai_edge_litert, else tflite_runtime)."""
    for n in names:
        try:
            return __import__(n, fromlist=["_"])
        except ImportError:
            continue
    raise MissingRuntime(names, what)


def _version(dist: str) -> str:
    try:
        from importlib.metadata import version

        return version(dist)
    except Exception:  # noqa: BLE001 - metadata may be absent in a vendored install
        return "unknown"


FOLD_WEIGHTS = ("session.disable_quant_qdq", "1")


class OrtRunner:
    """onnxruntime, from a file or bytes; ``ort_format`` for ORT-mobile ``.ort`` files.

    ``fold_weights``: dequantize constant weights once when the session loads (`FOLD_WEIGHTS`: onnxruntime then
    constant-folds DequantizeLinear of initializers, which it otherwise keeps for its QDQ fusions): a weight-only file
    runs at fp32 speed instead of dequantizing every weight on every call (station on the emulated Cortex-A72: 2.7x
    fp32 -> 1.1x), holding float weights in RAM. Never for integer activations: it also turns off the QDQ fusions."""

    def __init__(
        self, model: str | bytes, *, ort_format: bool = False, threads: int = 1, optimize: bool = True, fold_weights: bool = False
    ) -> None:
        ort = import_first(["onnxruntime"], "an ONNX Runtime artifact")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        if not optimize:
            opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        if fold_weights:
            opts.add_session_config_entry(*FOLD_WEIGHTS)
        if ort_format:
            opts.add_session_config_entry("session.load_model_format", "ORT")
        self.session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.runtime = {"name": "onnxruntime", "version": ort.__version__}

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        return list(self.session.run(outputs, feeds))


def _perm(shape: Sequence[Any], tfl: Sequence[int], name: str) -> tuple[int, ...] | None:
    """None when the TFLite shape is the ONNX shape; the NCHW -> NHWC permutation when it is its NHWC form. The
    batch axis is the graph's own: 1, or the batch a model was exported with (onnx2tf keeps a fixed batch)."""
    tfl = [int(x) for x in tfl]
    want = [tfl[0] if tfl else 1] + list(shape)
    if len(want) == len(tfl) and all(a is None or a == b for a, b in zip(want, tfl)):
        return None
    perm = (0,) + tuple(range(2, len(want))) + (1,)
    if len(want) >= 3 and all(want[p] is None or want[p] == b for p, b in zip(perm, tfl)):
        return perm
    raise ValueError(f"TFLite tensor '{name}' has shape {tfl}, which is neither the ONNX shape {want} nor its NHWC form")


def _qparams(d: dict[str, Any]) -> tuple[float | None, int, Any]:
    qp = d.get("quantization_parameters") or {}
    scales = qp.get("scales")
    dt = np.dtype(d["dtype"])
    if dt.kind == "f" or scales is None or len(scales) == 0:
        return (None, 0, dt)
    return (float(scales[0]), int(qp["zero_points"][0]), dt)


class Batch1Runner:
    """Runs a TFLite graph ``rows`` rows at a time (1, or a model's fixed batch); subclasses set ``_set``, ``_invoke``
    and ``_get``."""

    in_perm: dict[str, tuple[int, ...] | None]
    out_inv: dict[str, tuple[int, ...] | None]
    qin: dict[str, tuple[float | None, int, Any]]
    qout: dict[str, tuple[float | None, int, Any]]
    runtime: dict[str, Any]
    rows: int
    plain: bool = False  # float tensors in the ONNX layout: a call of ``rows`` rows is handed over as it is
    fresh_outputs = False  # ``_get`` returns a copy the next invoke does not overwrite

    def _layouts(self, inputs: IO, outputs: IO, in_shapes: Sequence[Sequence[int]], out_shapes: Sequence[Sequence[int]]) -> None:
        self.in_perm = {d["name"]: _perm(d["shape"], s, d["name"]) for d, s in zip(inputs, in_shapes)}
        # rows per invoke: 1, or a fixed batch the model was exported with (a hard-coded reshape needs all B rows)
        self.rows = max(1, int(in_shapes[0][0])) if in_shapes and len(in_shapes[0]) else 1
        self.out_inv = {}
        for d, s in zip(outputs, out_shapes):
            p = _perm(d["shape"], s, d["name"])
            self.out_inv[d["name"]] = None if p is None else tuple(int(i) for i in np.argsort(p))
        perms = [*self.in_perm.values(), *self.out_inv.values()]
        scales = [q[0] for q in (*self.qin.values(), *self.qout.values())]
        self.plain = all(p is None for p in perms) and all(s is None for s in scales)

    @staticmethod
    def quant(x: np.ndarray, q: tuple[float | None, int, Any]) -> np.ndarray:
        scale, zero, dt = q
        if scale is None:
            return x.astype(dt)
        info = np.iinfo(dt)
        return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(dt)

    @staticmethod
    def dequant(y: np.ndarray, q: tuple[float | None, int, Any]) -> np.ndarray:
        scale, zero, _ = q
        return y.astype(np.float32) if scale is None else ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def _set(self, name: str, x: np.ndarray) -> None:
        raise NotImplementedError

    def _invoke(self) -> None:
        raise NotImplementedError

    def _get(self, name: str) -> np.ndarray:
        raise NotImplementedError

    def run(self, outputs: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        batch = next(iter(feeds.values())).shape[0]
        if self.plain and self.fresh_outputs and batch == self.rows:
            # one invoke with nothing to lay out or quantize: only the runtime's own copies (a rollout step is timed
            # through here, and on a Pi-class core, let alone under qemu, each numpy call costs)
            for name, arr in feeds.items():
                if name in self.in_perm:
                    dt = self.qin[name][2]
                    self._set(name, arr if arr.dtype == dt and arr.flags.c_contiguous else np.ascontiguousarray(arr, dt))
            self._invoke()
            return [self._get(o) for o in outputs]
        rows: list[list[np.ndarray]] = [[] for _ in outputs]
        n = self.rows
        for b in range(0, batch, n):
            for name, arr in feeds.items():
                if name in self.in_perm:
                    p = self.in_perm[name]
                    x = arr[b : b + n]
                    if x.shape[0] < n:  # a fixed-batch graph fed fewer rows: pad with the last, dropped below
                        x = np.concatenate([x, np.repeat(x[-1:], n - x.shape[0], axis=0)])
                    self._set(name, self.quant(np.ascontiguousarray(x if p is None else x.transpose(p)), self.qin[name]))
            self._invoke()
            for j, o in enumerate(outputs):
                y, inv = self.dequant(self._get(o), self.qout[o]), self.out_inv[o]
                y = y.copy() if inv is None else np.ascontiguousarray(y.transpose(inv))
                rows[j].append(y[: min(n, batch - b)])
        return [np.concatenate(r, axis=0) for r in rows]


class LiteRunner(Batch1Runner):
    """LiteRT (``ai_edge_litert``, else ``tflite_runtime``) from a file or bytes.

    Inputs and outputs are found by name (onnx2tf keeps ONNX names with -coion), else by position: ``order_in`` /
    ``order_out`` (ONNX name -> position among the subgraph's inputs/outputs, read from a ``serving_default``
    signature) where the file was converted through TensorFlow's converter, whose names are the signature's."""

    fresh_outputs = True  # the interpreter's get_tensor returns a copy

    def __init__(
        self,
        model: str | bytes,
        inputs: IO,
        outputs: IO,
        *,
        threads: int = 1,
        order_in: dict[str, int] | None = None,
        order_out: dict[str, int] | None = None,
    ) -> None:
        mod = import_first(["ai_edge_litert.interpreter", "tflite_runtime.interpreter"], "a .tflite artifact")
        if isinstance(model, (bytes, bytearray)):
            self.it = mod.Interpreter(model_content=bytes(model), num_threads=threads)
        else:
            self.it = mod.Interpreter(model_path=model, num_threads=threads)
        self.it.allocate_tensors()
        ins, outs = self.it.get_input_details(), self.it.get_output_details()
        by_in, by_out = {d["name"]: d for d in ins}, {d["name"]: d for d in outs}
        din = [ins[order_in[d["name"]]] if order_in else by_in.get(d["name"], ins[k]) for k, d in enumerate(inputs)]
        dout = [outs[order_out[d["name"]]] if order_out else by_out.get(d["name"], outs[k]) for k, d in enumerate(outputs)]
        self.idx_in = {d["name"]: t["index"] for d, t in zip(inputs, din)}
        self.idx_out = {d["name"]: t["index"] for d, t in zip(outputs, dout)}
        self.qin = {d["name"]: _qparams(t) for d, t in zip(inputs, din)}
        self.qout = {d["name"]: _qparams(t) for d, t in zip(outputs, dout)}
        self._layouts(inputs, outputs, [list(t["shape"]) for t in din], [list(t["shape"]) for t in dout])
        name = mod.__name__.split(".")[0]
        self.runtime = {"name": name, "version": _version(name.replace("_", "-"))}

    def _set(self, name: str, x: np.ndarray) -> None:
        self.it.set_tensor(self.idx_in[name], x)

    def _invoke(self) -> None:
        self.it.invoke()

    def _get(self, name: str) -> np.ndarray:
        return np.asarray(self.it.get_tensor(self.idx_out[name]))


class MicroRunner(Batch1Runner):
    """The tflite-micro interpreter with a given tensor arena.

    Args:
        order_in, order_out: ONNX input/output name -> position among the TFLite subgraph's inputs/outputs
            (what the interpreter indexes by; the converter reads it from the model's signature).
    """

    def __init__(
        self, path: str, inputs: IO, outputs: IO, *, arena_bytes: int, order_in: dict[str, int], order_out: dict[str, int]
    ) -> None:
        mod = import_first(["tflite_micro"], "a TFLite-Micro artifact")
        self.it = mod.runtime.Interpreter.from_file(path, arena_size=int(arena_bytes))
        self.idx_in = {d["name"]: int(order_in[d["name"]]) for d in inputs}
        self.idx_out = {d["name"]: int(order_out[d["name"]]) for d in outputs}
        din = {n: self.it.get_input_details(i) for n, i in self.idx_in.items()}
        dout = {n: self.it.get_output_details(i) for n, i in self.idx_out.items()}
        self.qin = {n: _qparams(d) for n, d in din.items()}
        self.qout = {n: _qparams(d) for n, d in dout.items()}
        self._layouts(inputs, outputs, [list(din[d["name"]]["shape"]) for d in inputs], [list(dout[d["name"]]["shape"]) for d in outputs])
        self.runtime = {"name": "tflite_micro", "version": _version("tflite-micro"), "arena_bytes": int(arena_bytes)}

    def _set(self, name: str, x: np.ndarray) -> None:
        self.it.set_input(x, self.idx_in[name])

    def _invoke(self) -> None:
        self.it.invoke()

    def _get(self, name: str) -> np.ndarray:
        return np.asarray(self.it.get_output(self.idx_out[name]))


RUNNERS: dict[str, Any] = {
    "onnxruntime": lambda job, path, threads: OrtRunner(
        path, ort_format=bool(job.get("ort_format")), threads=threads, fold_weights=bool(job.get("fold_weights"))
    ),
    "litert": lambda job, path, threads: LiteRunner(
        path, job["inputs"], job["outputs"], threads=threads, order_in=job.get("tflite_inputs"), order_out=job.get("tflite_outputs")
    ),
    "tflite-micro": lambda job, path, threads: MicroRunner(
        path, job["inputs"], job["outputs"], arena_bytes=job["arena_bytes"], order_in=job["tflm_inputs"], order_out=job["tflm_outputs"]
    ),
}


def open_runner(job: dict[str, Any], path: str, threads: int = 1) -> Any:
    """The runner a job names (``runner``: one of `RUNNERS`); each runtime plug-in says which it needs."""
    try:
        make = RUNNERS[job["runner"]]
    except KeyError:
        raise ValueError(f"unknown runner {job.get('runner')!r} in job.json; expected one of {', '.join(RUNNERS)}") from None
    return make(job, path, threads)
