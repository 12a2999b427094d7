"""edgetqs rollout driver: runs on the device, needs only numpy and one runtime.

    python driver.py JOB_DIR

JOB_DIR holds this file with its two companions ``step.py`` (the closed loop, the same code the host
rolls out with) and ``runners.py`` (one session class per runtime), ``job.json`` (artifact file name,
runner, how outputs feed back, the horizon, the batch), ``inputs.npz`` (``ctx__NAME`` [K, ...] initial
states, ``static__NAME`` fixed inputs, ``forcing__NAME`` [K, T, ...] per-step inputs) and the artifact.
The driver rolls the contexts out for ``horizon`` steps, ``batch`` contexts per call (1 unless the model
was exported with a fixed batch: one forecast at a time, as a station runs it), and writes
``result.npz`` (``traj__OUTPUT`` [T, K, ...]) and ``result.json`` (per-call latency with the first
inference and the runtime's start-up apart, the peak resident memory of the process, the runtime and
machine it ran on).

It imports nothing from edgetqs, so it can be copied to a Raspberry Pi or run by an emulated aarch64
Python. A missing module is reported in result.json (``error``, ``missing``) with exit status 3, so the
host can say what to install.
"""

from __future__ import annotations

import json
import os
import platform
import resource
import sys
import time
from typing import Any

MISSING_EXIT = 3


def _fail(job_dir: str, kind: str, message: str, missing: str | None = None) -> None:
    with open(os.path.join(job_dir, "result.json"), "w") as f:
        json.dump(
            {"error": kind, "message": message, "missing": missing, "python": sys.version.split()[0], "machine": platform.machine()}, f
        )
    sys.exit(MISSING_EXIT if kind == "missing-module" else 4)


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


def _percentiles(ms: list[float]) -> dict[str, Any]:
    import numpy as np

    if not ms:
        return {"n": 0}
    a = np.asarray(ms)
    return {
        "n": int(a.size),
        "min": float(a.min()),
        "p50": float(np.percentile(a, 50)),
        "p90": float(np.percentile(a, 90)),
        "p99": float(np.percentile(a, 99)),
        "mean": float(a.mean()),
        "max": float(a.max()),
    }


def main(job_dir: str) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))  # step.py and runners.py travel beside this file
    try:
        import numpy as np
    except ImportError:
        _fail(job_dir, "missing-module", "the driver needs the Python module numpy", "numpy")
    import runners
    import step

    with open(os.path.join(job_dir, "job.json")) as f:
        job = json.load(f)
    threads = int(job.get("threads", 1))
    t0 = time.perf_counter()
    try:
        run = runners.open_runner(job, os.path.join(job_dir, job["artifact"]), threads)
    except runners.MissingRuntime as exc:
        _fail(job_dir, "missing-module", str(exc), exc.modules[0])
    init_ms = (time.perf_counter() - t0) * 1e3
    data = np.load(os.path.join(job_dir, "inputs.npz"))
    pairs = [tuple(p) for p in job["pairs"]]
    statics = {k[len("static__") :]: data[k] for k in data.files if k.startswith("static__")}
    forcings = {k[len("forcing__") :]: data[k] for k in data.files if k.startswith("forcing__")}
    ctx = [data["ctx__" + i] for i, _ in pairs]
    feedback = step.Feedback(job["mode"] == "window", bool(job.get("increment")), job.get("output_slice"), job.get("window_form", "steps"))
    dtypes = {d["name"]: np.dtype(d.get("dtype", "float32")) for d in job["inputs"]}
    times: list[float] = []
    with np.errstate(all="ignore"):
        traj, _ = step.closed_loop(
            run.run,
            pairs,
            ctx,
            int(job["horizon"]),
            feedback,
            statics=statics,
            forcings=forcings,
            batch=int(job.get("batch") or 1),
            dtypes=dtypes,
            timer=times.append,
        )
    np.savez(os.path.join(job_dir, "result.npz"), **{"traj__" + o: tr.astype(np.float32) for (_, o), tr in zip(pairs, traj)})
    result = {
        "runtime": run.runtime,
        "runner": job["runner"],
        "python": sys.version.split()[0],
        "numpy": np.__version__,
        "machine": platform.machine(),
        "cpu": _cpu(),
        "threads": threads,
        "contexts": int(ctx[0].shape[0]),
        "horizon": int(job["horizon"]),
        "batch": int(job.get("batch") or 1),
        "latency_ms_init": init_ms,
        "latency_ms_first": times[0] if times else None,
        "latency_ms": _percentiles(times[1:]),
        "peak_rss_bytes": int(_peak_rss()),
        "first_nonfinite_step": step.first_nonfinite(traj),
    }
    with open(os.path.join(job_dir, "result.json"), "w") as f:
        json.dump(result, f)


if __name__ == "__main__":
    main(sys.argv[1])
