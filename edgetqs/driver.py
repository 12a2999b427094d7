"""edgetqs rollout driver: runs on the device, needs only numpy and one runtime.

    python driver.py JOB_DIR

JOB_DIR holds ``job.json`` (the artifact's file name and format, how outputs feed back, the
horizon), ``inputs.npz`` (``ctx__NAME`` [K, ...] initial states, ``static__NAME`` fixed inputs) and
the artifact. The driver rolls each context out for ``horizon`` steps at batch 1 (one forecast at
a time, as a station runs it) and writes ``result.npz`` (``traj__OUTPUT`` [T, K, ...]) and
``result.json`` (per-step latency with the first inference and the runtime's start-up apart, the
peak resident memory of the process, the runtime and machine it ran on).

It imports nothing from edgetqs, so it can be copied alone to a Raspberry Pi or run by an emulated
aarch64 Python. Runtimes: onnxruntime (``ort``: .onnx, ``ort-mobile``: .ort), ai_edge_litert or
tflite_runtime (``tflite``), tflite_micro (``tflm``). A missing module is reported in result.json
(``error``, ``missing``) and the exit status is 3, so the host can say what to install.
"""

from __future__ import annotations

import json
import os
import platform
import re
import resource
import sys
import time

MISSING_EXIT = 3


def _fail(job_dir: str, kind: str, message: str, missing: str | None = None) -> None:
    with open(os.path.join(job_dir, "result.json"), "w") as f:
        json.dump({"error": kind, "message": message, "missing": missing, "python": sys.version.split()[0], "machine": platform.machine()}, f)
    sys.exit(MISSING_EXIT if kind == "missing-module" else 4)


def _import(job_dir: str, names: list[str], what: str):
    for n in names:
        try:
            return __import__(n, fromlist=["_"])
        except ImportError:
            continue
    _fail(job_dir, "missing-module", f"{what} needs the Python module {' or '.join(names)}", names[0])


def parse_slice(text: str) -> tuple:
    parts: list = []
    for raw in text.strip().strip("[]").split(","):
        s = raw.strip()
        if s == "...":
            parts.append(Ellipsis)
        elif re.fullmatch(r"-?\d+", s):
            parts.append(int(s))
        else:
            parts.append(slice(*[int(x) if x not in ("", None) else None for x in s.split(":")]))
    return tuple(parts)


class OrtRunner:
    def __init__(self, path: str, fmt: str, threads: int) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.log_severity_level = 3
        if fmt == "ort-mobile":
            opts.add_session_config_entry("session.load_model_format", "ORT")
        self.s = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        self.runtime = {"name": "onnxruntime", "version": ort.__version__}

    def __call__(self, outputs: list[str], feeds: dict) -> list:
        return self.s.run(outputs, feeds)


class _Batch1:
    """Batch-1 TFLite graphs: NCHW<->NHWC where onnx2tf changed the layout; int I/O (de)quantized."""

    def layouts(self, inputs: list[dict], outputs: list[dict], in_shapes: list, out_shapes: list) -> None:
        self.in_perm = {d["name"]: self._perm(d["shape"], s) for d, s in zip(inputs, in_shapes)}
        self.out_inv = {}
        for d, s in zip(outputs, out_shapes):
            p = self._perm(d["shape"], s)
            self.out_inv[d["name"]] = None if p is None else tuple(int(i) for i in __import__("numpy").argsort(p))

    @staticmethod
    def _perm(shape: list, tfl: list) -> tuple | None:
        want = [1] + list(shape)
        tfl = [int(x) for x in tfl]
        if len(want) == len(tfl) and all(a is None or a == b for a, b in zip(want, tfl)):
            return None
        perm = (0,) + tuple(range(2, len(want))) + (1,)
        if len(want) >= 3 and all(want[p] is None or want[p] == b for p, b in zip(perm, tfl)):
            return perm
        raise ValueError(f"TFLite tensor shape {tfl} is neither {want} nor its NHWC form")

    @staticmethod
    def quant(x, q):
        import numpy as np

        scale, zero, dt = q
        if scale is None:
            return x.astype(dt)
        info = np.iinfo(dt)
        return np.clip(np.rint(x / scale) + zero, info.min, info.max).astype(dt)

    @staticmethod
    def dequant(y, q):
        import numpy as np

        scale, zero, _ = q
        return y.astype(np.float32) if scale is None else ((y.astype(np.float32) - zero) * scale).astype(np.float32)

    def __call__(self, outputs: list[str], feeds: dict) -> list:
        import numpy as np

        for name, x in feeds.items():
            if name in self.in_perm:
                p = self.in_perm[name]
                self.set(name, np.ascontiguousarray(x if p is None else x.transpose(p)))
        self.invoke()
        res = []
        for o in outputs:
            y, inv = self.get(o), self.out_inv[o]
            res.append(y if inv is None else np.ascontiguousarray(y.transpose(inv)))
        return res


def _qparams(d) -> tuple:
    import numpy as np

    qp = d.get("quantization_parameters") or {}
    scales = qp.get("scales")
    dt = np.dtype(d["dtype"])
    if dt.kind == "f" or scales is None or len(scales) == 0:
        return (None, 0, dt)
    return (float(scales[0]), int(qp["zero_points"][0]), dt)


class LiteRunner(_Batch1):
    def __init__(self, path: str, job: dict, threads: int, job_dir: str) -> None:
        mod = _import(job_dir, ["ai_edge_litert.interpreter", "tflite_runtime.interpreter"], "a .tflite artifact")
        self.it = mod.Interpreter(model_path=path, num_threads=threads)
        self.it.allocate_tensors()
        ins, outs = self.it.get_input_details(), self.it.get_output_details()
        by_in, by_out = {d["name"]: d for d in ins}, {d["name"]: d for d in outs}
        din = [by_in.get(d["name"], ins[k]) for k, d in enumerate(job["inputs"])]
        dout = [by_out.get(d["name"], outs[k]) for k, d in enumerate(job["outputs"])]
        self.idx_in = {d["name"]: (t["index"], _qparams(t)) for d, t in zip(job["inputs"], din)}
        self.idx_out = {d["name"]: (t["index"], _qparams(t)) for d, t in zip(job["outputs"], dout)}
        self.layouts(job["inputs"], job["outputs"], [list(t["shape"]) for t in din], [list(t["shape"]) for t in dout])
        name = mod.__name__.split(".")[0]
        try:
            from importlib.metadata import version

            v = version(name.replace("_", "-"))
        except Exception:
            v = "unknown"
        self.runtime = {"name": name, "version": v}

    def set(self, name, x):
        i, q = self.idx_in[name]
        self.it.set_tensor(i, self.quant(x, q))

    def invoke(self):
        self.it.invoke()

    def get(self, name):
        i, q = self.idx_out[name]
        return self.dequant(self.it.get_tensor(i), q).copy()


class MicroRunner(_Batch1):
    def __init__(self, path: str, job: dict, job_dir: str) -> None:
        mod = _import(job_dir, ["tflite_micro"], "a TFLite-Micro artifact")
        self.it = mod.runtime.Interpreter.from_file(path, arena_size=int(job["arena_bytes"]))
        order_in, order_out = job["tflm_inputs"], job["tflm_outputs"]
        self.idx_in = {d["name"]: (order_in[d["name"]], _qparams(self.it.get_input_details(order_in[d["name"]]))) for d in job["inputs"]}
        self.idx_out = {d["name"]: (order_out[d["name"]], _qparams(self.it.get_output_details(order_out[d["name"]]))) for d in job["outputs"]}
        shapes_in = [list(self.it.get_input_details(order_in[d["name"]])["shape"]) for d in job["inputs"]]
        shapes_out = [list(self.it.get_output_details(order_out[d["name"]])["shape"]) for d in job["outputs"]]
        self.layouts(job["inputs"], job["outputs"], shapes_in, shapes_out)
        try:
            from importlib.metadata import version

            v = version("tflite-micro")
        except Exception:
            v = "unknown"
        self.runtime = {"name": "tflite_micro", "version": v, "arena_bytes": int(job["arena_bytes"])}

    def set(self, name, x):
        i, q = self.idx_in[name]
        self.it.set_input(self.quant(x, q), i)

    def invoke(self):
        self.it.invoke()

    def get(self, name):
        i, q = self.idx_out[name]
        return self.dequant(self.it.get_output(i), q).copy()


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith(("model name", "cpu part", "hardware")):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _peak_rss() -> int:
    """Peak resident memory of this process in bytes. VmHWM, not getrusage: ru_maxrss survives
    execve, so a driver started from a large parent would report the parent's peak."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def _percentiles(ms: list[float]) -> dict:
    import numpy as np

    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {"n": int(a.size), "min": float(a.min()), "p50": float(np.percentile(a, 50)), "p90": float(np.percentile(a, 90)),
            "p99": float(np.percentile(a, 99)), "mean": float(a.mean()), "max": float(a.max())}


def main(job_dir: str) -> None:
    np = _import(job_dir, ["numpy"], "the driver")
    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    fmt = job["format"]
    path = os.path.join(job_dir, job["artifact"])
    threads = int(job.get("threads", 1))
    t0 = time.perf_counter()
    if fmt in ("ort", "ort-mobile"):
        _import(job_dir, ["onnxruntime"], "an ONNX Runtime artifact")
        run = OrtRunner(path, fmt, threads)
    elif fmt == "tflite":
        run = LiteRunner(path, job, threads, job_dir)
    elif fmt == "tflm":
        run = MicroRunner(path, job, job_dir)
    else:
        _fail(job_dir, "bad-job", f"unknown format {fmt!r}")
    init_ms = (time.perf_counter() - t0) * 1e3
    data = np.load(os.path.join(job_dir, "inputs.npz"))
    pairs = [tuple(p) for p in job["pairs"]]
    statics = {k[len("static__"):]: data[k] for k in data.files if k.startswith("static__")}
    ctx = [data["ctx__" + i] for i, _ in pairs]
    index = parse_slice(job["output_slice"]) if job.get("output_slice") else None
    horizon, window, increment = int(job["horizon"]), job["mode"] == "window", bool(job.get("increment"))
    dtypes = {d["name"]: np.dtype(d.get("dtype", "float32")) for d in job["inputs"]}
    outs = [o for _, o in pairs]
    k = ctx[0].shape[0]
    traj: list = [None] * len(outs)  # [T, K, ...] per fed-back output, sized at the first step
    times, first_ms, first_bad = [], None, None
    with np.errstate(all="ignore"):
        for c in range(k):
            state = [x[c:c + 1].astype(dtypes[i]) for x, (i, _) in zip(ctx, pairs)]
            feeds = {n: v[None].astype(dtypes.get(n, v.dtype)) for n, v in statics.items()}
            for t in range(horizon):
                for (i, _), x in zip(pairs, state):
                    feeds[i] = x
                s = time.perf_counter()
                ys = run(outs, feeds)
                ms = (time.perf_counter() - s) * 1e3
                if first_ms is None:
                    first_ms = ms
                else:
                    times.append(ms)
                new = []
                for j, (x, y) in enumerate(zip(state, ys)):
                    y = np.asarray(y)
                    if index is not None:
                        y = y[index]
                    if increment:
                        y = (x[:, -1:, :] + y) if window else (x + y)
                    y = y.astype(x.dtype, copy=False)
                    if traj[j] is None:
                        traj[j] = np.full((horizon, k) + y.shape[1:], np.nan, np.float32)
                    traj[j][t, c] = y[0]
                    if first_bad is None and not np.isfinite(y).all():
                        first_bad = t + 1
                    if window:
                        h = y.shape[1]
                        new.append(np.concatenate([x[:, h:, :], y], axis=1) if h < x.shape[1] else y[:, -x.shape[1]:, :])
                    else:
                        new.append(y)
                state = new
    np.savez(os.path.join(job_dir, "result.npz"), **{"traj__" + o: tr for o, tr in zip(outs, traj)})
    peak = _peak_rss()
    result = {
        "runtime": run.runtime, "format": fmt, "python": sys.version.split()[0], "numpy": np.__version__,
        "machine": platform.machine(), "cpu": _cpu(), "threads": threads, "contexts": int(k), "horizon": horizon,
        "latency_ms_init": init_ms, "latency_ms_first": first_ms, "latency_ms": _percentiles(times),
        "peak_rss_bytes": int(peak), "first_nonfinite_step": first_bad,
    }
    with open(os.path.join(job_dir, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
