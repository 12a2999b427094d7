"""Which ONNX Runtime kernel runs a small MLP fastest: fp32 Gemm, weight-only DequantizeLinear, MatMulNBits
(8 and 4 bits, accuracy_level 4 = int8 compute, or 0), dynamic int8 (MatMulInteger) and static QDQ on MatMul.

The edgetqs size rule for MatMulNBits (`edgetqs.runtimes.ort.NBITS_MIN_K`) comes from this script: one model
per layer width (batch 1, `--layers` Gemm layers of K x K with Tanh between), every kernel kind, p50 over
`--calls` runs after a warm-up (kinds interleaved in rounds), printed as the ratio to fp32's p50 measured in the
same process. The static kinds use fixed activation scales, not calibrated ones: their "max abs diff" column says
nothing about the accuracy of a calibrated artifact (`edgetqs check` measures that).

Two steps, so that the timing runs in the emulated Pi's Python (which has onnxruntime and numpy, not onnx):

    PYTHONPATH=. python scripts/bench_ort_kernels.py build /tmp/kernels --widths 48 96 128 256 512
    nice -n 5 python scripts/bench_ort_kernels.py time /tmp/kernels
    qemu-aarch64-static -cpu cortex-a72 -L $ROOT $ROOT/usr/bin/python3.11 scripts/bench_ort_kernels.py time /tmp/kernels
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np


def _build(out: Path, widths: list[int], layers: int) -> None:
    """Write one ONNX file per (width, kernel kind) and an index."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from edgetqs.core.quantize import Layout, parse_precision, quantize_int
    from edgetqs.runtimes.ort import _nbits_arrays

    out.mkdir(parents=True, exist_ok=True)
    index: list[dict[str, Any]] = []
    for k in widths:
        rng = np.random.default_rng(k)
        ws = [(rng.standard_normal((k, k)) / np.sqrt(k)).astype(np.float32) for _ in range(layers)]  # [N, K] (Gemm transB)
        bs = [rng.standard_normal(k).astype(np.float32) * 0.1 for _ in range(layers)]

        def model(kind: str, k: int = k, ws: list[np.ndarray] = ws, bs: list[np.ndarray] = bs) -> onnx.ModelProto:
            nodes, inits = [], []
            x = "x"
            for i, (w, b) in enumerate(zip(ws, bs)):
                y = f"h{i}"
                inits.append(numpy_helper.from_array(b, f"b{i}"))
                if kind == "fp32":
                    inits.append(numpy_helper.from_array(w, f"w{i}"))
                    nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y + "_pre"], transB=1))
                elif kind == "dq-int8-channel":
                    qt = quantize_int(w, parse_precision("int8-channel"), Layout(0, 1))
                    inits += [numpy_helper.from_array(qt.q, f"w{i}_q"), numpy_helper.from_array(qt.scale, f"w{i}_s")]
                    nodes.append(helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_s"], [f"w{i}"], axis=0))
                    nodes.append(helper.make_node("Gemm", [x, f"w{i}", f"b{i}"], [y + "_pre"], transB=1))
                elif kind.startswith("nbits"):  # nbits{bits}-b{block}-acc{level}
                    head, blk, lvl = kind.split("-")
                    bits, block, acc = int(head[5:]), int(blk[1:]), int(lvl[3:])
                    p = parse_precision(f"int{bits}-block{block}")
                    packed, scale = _nbits_arrays(quantize_int(w, p, Layout(0, 1)), bits, block)
                    inits += [numpy_helper.from_array(packed, f"w{i}_nb"), numpy_helper.from_array(scale, f"w{i}_s")]
                    nodes.append(
                        helper.make_node(
                            "MatMulNBits",
                            [x, f"w{i}_nb", f"w{i}_s"],
                            [y + "_mm"],
                            domain="com.microsoft",
                            K=k,
                            N=k,
                            bits=bits,
                            block_size=block,
                            accuracy_level=acc,
                        )
                    )
                    nodes.append(helper.make_node("Add", [y + "_mm", f"b{i}"], [y + "_pre"]))
                elif kind in ("dynamic-int8", "static-int8", "static-int8-in", "static-int8-chan"):
                    # MatMul + Add on an int8 per-tensor weight [K, N]
                    chan = kind == "static-int8-chan"
                    qt = quantize_int(w.T.copy(), parse_precision("int8-channel" if chan else "int8-tensor"), Layout(1, 0))
                    inits += [numpy_helper.from_array(qt.q, f"w{i}_q"), numpy_helper.from_array(qt.scale, f"w{i}_s")]
                    nodes.append(helper.make_node("DequantizeLinear", [f"w{i}_q", f"w{i}_s"], [f"w{i}"], **({"axis": 1} if chan else {})))
                    xin = x
                    if kind == "static-int8-in":  # input activations only: DQ -> MatMul with a float output
                        inits += [
                            numpy_helper.from_array(np.float32(2.0 / 255), f"x{i}_s"),
                            numpy_helper.from_array(np.uint8(128), f"x{i}_z"),
                        ]
                        nodes.append(helper.make_node("QuantizeLinear", [x, f"x{i}_s", f"x{i}_z"], [f"x{i}_q"]))
                        nodes.append(helper.make_node("DequantizeLinear", [f"x{i}_q", f"x{i}_s", f"x{i}_z"], [f"x{i}_dq"]))
                        nodes.append(helper.make_node("MatMul", [f"x{i}_dq", f"w{i}"], [y + "_mm"]))
                        nodes.append(helper.make_node("Add", [y + "_mm", f"b{i}"], [y + "_pre"]))
                    elif kind in ("static-int8", "static-int8-chan"):
                        inits += [
                            numpy_helper.from_array(np.float32(2.0 / 255), f"x{i}_s"),
                            numpy_helper.from_array(np.uint8(128), f"x{i}_z"),
                        ]
                        nodes.append(helper.make_node("QuantizeLinear", [x, f"x{i}_s", f"x{i}_z"], [f"x{i}_q"]))
                        nodes.append(helper.make_node("DequantizeLinear", [f"x{i}_q", f"x{i}_s", f"x{i}_z"], [f"x{i}_dq"]))
                        xin = f"x{i}_dq"
                        nodes.append(helper.make_node("MatMul", [xin, f"w{i}"], [y + "_mm"]))
                        inits += [
                            numpy_helper.from_array(np.float32(8.0 / 255), f"y{i}_s"),
                            numpy_helper.from_array(np.uint8(128), f"y{i}_z"),
                        ]
                        nodes.append(helper.make_node("QuantizeLinear", [y + "_mm", f"y{i}_s", f"y{i}_z"], [f"y{i}_q"]))
                        nodes.append(helper.make_node("DequantizeLinear", [f"y{i}_q", f"y{i}_s", f"y{i}_z"], [f"y{i}_dq"]))
                        nodes.append(helper.make_node("Add", [f"y{i}_dq", f"b{i}"], [y + "_pre"]))
                    else:
                        nodes.append(helper.make_node("DynamicQuantizeLinear", [x], [f"x{i}_q", f"x{i}_s", f"x{i}_z"]))
                        nodes.append(helper.make_node("MatMulInteger", [f"x{i}_q", f"w{i}_q", f"x{i}_z"], [f"y{i}_int"]))
                        nodes.append(helper.make_node("Cast", [f"y{i}_int"], [f"y{i}_f"], to=TensorProto.FLOAT))
                        nodes.append(helper.make_node("Mul", [f"x{i}_s", f"w{i}_s"], [f"s{i}"]))
                        nodes.append(helper.make_node("Mul", [f"y{i}_f", f"s{i}"], [y + "_mm"]))
                        nodes.append(helper.make_node("Add", [y + "_mm", f"b{i}"], [y + "_pre"]))
                nodes.append(helper.make_node("Tanh", [y + "_pre"], [y]))
                x = y
            g = helper.make_graph(
                nodes,
                "mlp",
                [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])],
                [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, k])],
                inits,
            )
            return helper.make_model(g, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)], ir_version=10)

        kinds = ["fp32", "dq-int8-channel", "dynamic-int8", "static-int8", "static-int8-chan", "static-int8-in"]
        for bits in (8, 4):
            for block in sorted({32, min(256, 1 << (k - 1).bit_length())}):
                kinds += [f"nbits{bits}-b{block}-acc4"]
        kinds += ["nbits8-b32-acc0"]
        for kind in kinds:
            f = out / f"mlp{k}_{kind}.onnx"
            onnx.save(model(kind), f)
            index.append({"width": k, "kind": kind, "file": f.name})
    (out / "index.json").write_text(json.dumps(index, indent=1))


class _Lite:
    """A LiteRT interpreter (the default resolver: XNNPACK) with onnxruntime's ``run(None, feeds)``; feeds in the
    model's input order (a TFLite file from onnx2tf renames inputs; a window [1, L, F] keeps its layout)."""

    def __init__(self, path: Path, threads: int) -> None:
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError:  # a device with only the old runtime
            from tflite_runtime.interpreter import Interpreter  # type: ignore[no-redef]
        self.it = Interpreter(model_path=str(path), num_threads=threads)
        self.it.allocate_tensors()
        self.ins = self.it.get_input_details()
        self.out = self.it.get_output_details()[0]
        self.order: list[str] | None = None
        self.how: list[tuple[int, tuple[int, ...], tuple[float, int, Any] | None]] = []
        self.out_scale: tuple[float, int, Any] | None = None

    def pair(self, feeds: dict[str, np.ndarray]) -> list[str]:
        """The feed for each interpreter input, by size: a converter may reorder the inputs (blizzard's state and its
        one-channel static field) and lay them out NHWC. The feeds are random, so a reshape of the right size times
        the same call. Worked out once, outside the timed calls: under qemu Python's own work is not free."""
        left = list(feeds)
        names = []
        for d in self.ins:
            size = int(np.prod(d["shape"]))
            k = next((i for i, n in enumerate(left) if feeds[n].size == size), None)
            if k is None:
                raise ValueError(f"no feed of {size} values for the TFLite input {d['name']} {[int(v) for v in d['shape']]}")
            names.append(left.pop(k))
        return names

    def run(self, _names: object, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        if self.order is None:  # once: which feed, its shape, and its input scale for a full-integer file
            self.order = self.pair(feeds)
            self.how = [(d["index"], tuple(d["shape"]), _scale(d)) for d in self.ins]
            self.out_scale = _scale(self.out)
        # per call only what onnxruntime's run does too: hand over the inputs, run, read the output
        for (index, shape, q), name in zip(self.how, self.order):
            x = feeds[name].reshape(shape)
            self.it.set_tensor(index, x if q is None else _quantized(x, *q))
        self.it.invoke()
        y = self.it.get_tensor(self.out["index"])
        return [y if self.out_scale is None else (y.astype(np.float32) - self.out_scale[1]) * self.out_scale[0]]


def _scale(d: dict) -> tuple[float, int, Any] | None:
    """(scale, zero point, dtype) of an integer tensor; None for a float one."""
    if not np.issubdtype(d["dtype"], np.integer):
        return None
    scale, zero = d["quantization"]
    return float(scale), int(zero), d["dtype"]


def _quantized(x: np.ndarray, scale: float, zero: int, dtype: Any) -> np.ndarray:
    info = np.iinfo(dtype)
    return np.clip(np.round(x / scale) + zero, info.min, info.max).astype(dtype)


def _time(folder: Path, calls: int, threads: int, rounds: int = 5) -> None:
    """p50 per kernel kind, the kinds of one width interleaved round by round (a shared host or an emulator drifts:
    interleaving spreads the drift over every kind instead of biasing the ones timed last)."""
    import onnxruntime as ort

    index = json.loads((folder / "index.json").read_text())
    print(f"onnxruntime {ort.__version__}, {calls} calls in {rounds} interleaved rounds, intra_op_threads {threads}", flush=True)
    print("| width | kernel | p50 us | p50 / fp32 | max abs diff vs fp32 |")
    print("|---:|---|---:|---:|---:|")
    # an index row: width (or group: a label), kind, file; optional inputs {name: shape} (default x [1, width]) and
    # fold (load with session.disable_quant_qdq=1: weights dequantized once, as the check loads weight-only files)
    groups = list(dict.fromkeys(r.get("group", r.get("width")) for r in index))
    for width in groups:
        rows, sessions, failed = [r for r in index if r.get("group", r.get("width")) == width], {}, {}
        for row in rows:
            try:
                if row["file"].endswith(".tflite"):
                    sessions[row["kind"]] = _Lite(folder / row["file"], threads)
                    continue
                o = ort.SessionOptions()
                o.intra_op_num_threads = threads
                o.log_severity_level = 3
                if row.get("fold"):
                    o.add_session_config_entry("session.disable_quant_qdq", "1")
                sessions[row["kind"]] = ort.InferenceSession(str(folder / row["file"]), o, providers=["CPUExecutionProvider"])
            except Exception as exc:  # a kernel this build lacks is a row, not a crash
                failed[row["kind"]] = str(exc).splitlines()[0][:80]
        shapes = rows[0].get("inputs") or {"x": [1, width]}
        rng = np.random.default_rng(0)
        feeds = {n: rng.standard_normal(shape).astype(np.float32) for n, shape in shapes.items()}
        ys = {k: np.asarray(s.run(None, feeds)[0]).reshape(-1) for k, s in sessions.items()}
        ts: dict[str, list[float]] = {k: [] for k in sessions}
        for _ in range(rounds):
            for k, s in sessions.items():
                for _ in range(5):
                    s.run(None, feeds)
                for _ in range(max(1, calls // rounds)):
                    t0 = time.perf_counter()
                    s.run(None, feeds)
                    ts[k].append(time.perf_counter() - t0)
        base = float(np.median(ts["fp32"])) if "fp32" in ts else float("nan")
        for row in rows:
            k = row["kind"]
            if k in failed:
                print(f"| {width} | {k} | - | - | not loaded: {failed[k]} |", flush=True)
                continue
            p50 = float(np.median(ts[k]))
            diff = float(np.abs(ys[k] - ys["fp32"]).max()) if "fp32" in ys and ys[k].shape == ys["fp32"].shape else float("nan")
            print(f"| {width} | {k} | {p50 * 1e6:.1f} | {p50 / base:.2f} | {diff:.4f} |", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    b = sub.add_parser("build")
    b.add_argument("out", type=Path)
    b.add_argument("--widths", type=int, nargs="+", default=[48, 96, 128, 256, 512, 1024])
    b.add_argument("--layers", type=int, default=4)
    t = sub.add_parser("time")
    t.add_argument("folder", type=Path)
    t.add_argument("--calls", type=int, default=300)
    t.add_argument("--threads", type=int, default=1)
    t.add_argument("--rounds", type=int, default=5)
    a = ap.parse_args()
    if a.cmd == "build":
        _build(a.out, a.widths, a.layers)
    else:
        _time(a.folder, a.calls, a.threads, a.rounds)
    sys.stdout.flush()


if __name__ == "__main__":
    main()
