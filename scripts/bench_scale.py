"""Sweep cost as the model grows, on each sweep backend: time, time against its bound, peak memory per parameter,
Ray's overhead against the local backends, and a projection of the sweep on N machines.

    python scripts/bench_scale.py [--family conv] [--sizes 100k,1m,5m,20m,50m] [--horizon 6] [--k 2] [--grid 12]
    python scripts/bench_scale.py --family station --sizes 48m,200m --granularity block --backends serial,processes,ray \\
        --horizon 4 --k 2 --workers 2

Two generated families, both built directly as ONNX with seeded random weights (no download):

- ``conv``: a state model [B, 4, G, G] -> x + 0.1 * head(residual conv blocks(x)), ~100 K to ~50 M parameters.
- ``station``: the bundled ``station`` window forecaster (24 h of 6 variables in, 6 h out: normalise,
  Linear(144 -> H), residual Linear(H -> H) + ReLU blocks, Linear(H -> 36) added to the last observed hour,
  de-normalise) scaled up: 48 M, 200 M and 600 M parameters. A model above 2 GiB (600m) is written with its
  weights in an external data file, as exporters must.

Each configuration (size x granularity x backend) runs in a fresh child process, so its memory is its own: the
peak of the summed proportional set size (PSS, shared pages split between the processes that map them) of the
child and every process under it (worker processes; for Ray also the raylet, the object store and the GCS),
sampled every 0.1 s, and the child's own VmHWM. Printed per configuration: parameters, groups, tasks, horizon,
wall seconds of the sweep (model already loaded; Ray: cluster already started, its start time apart), forward
steps, time per step (a rollout of the same contexts on the sweep's kind of session, one thread like every sweep
session, divided by its steps), the lower bound (1 + groups / workers) x T x step time (the reference rollout,
then the groups shared by the workers) and the ratio to it, the peak memory and bytes per parameter. Then Ray
against the local backends, and for each Ray run a projection on N machines like this one: the measured
per-task times list-scheduled on N x workers, plus the measured driver part (reference rollouts) and worker start,
plus shipping the weights to each machine at an assumed 1 GB/s. A projection, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

CONV = {"100k": (48, 4), "1m": (128, 6), "5m": (256, 8), "20m": (512, 8), "50m": (768, 9)}  # (channels, residual blocks)
STATION = {"1m": (384, 6), "48m": (2048, 11), "200m": (4096, 12), "600m": (6144, 15)}  # (hidden width, residual blocks)
L_IN, H_OUT, C = 24, 6, 6  # the station example: 24 h in, 6 h out, 6 variables
TRANSFER_BYTES_PER_S = 1e9  # assumed network rate for shipping the weights to another machine


def make_conv(path: Path, channels: int, blocks: int, grid: int, seed: int = 0) -> int:
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    inits, nodes = [], []

    def conv(name: str, cin: int, cout: int, k: int, x: str, out: str, gain: float = 1.0) -> None:
        w = (rng.standard_normal((cout, cin, k, k)) * gain / np.sqrt(cin * k * k)).astype(np.float32)
        inits.extend(
            [
                numpy_helper.from_array(w, f"{name}.weight"),
                numpy_helper.from_array((0.01 * rng.standard_normal(cout)).astype(np.float32), f"{name}.bias"),
            ]
        )
        nodes.append(helper.make_node("Conv", [x, f"{name}.weight", f"{name}.bias"], [out], pads=[k // 2] * 4))

    conv("stem", 4, channels, 3, "x", "s0")
    nodes.append(helper.make_node("Tanh", ["s0"], ["h0"]))
    h = "h0"
    for i in range(blocks):
        conv(f"block{i}.conv", channels, channels, 3, h, f"c{i}", gain=0.5)
        nodes += [helper.make_node("Tanh", [f"c{i}"], [f"t{i}"]), helper.make_node("Add", [h, f"t{i}"], [f"h{i + 1}"])]
        h = f"h{i + 1}"
    conv("head", channels, 4, 1, h, "d")
    inits.append(numpy_helper.from_array(np.array(0.1, np.float32), "k"))
    nodes += [helper.make_node("Mul", ["d", "k"], ["dk"]), helper.make_node("Add", ["x", "dk"], ["y"])]
    g = helper.make_graph(
        nodes,
        "scale",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", 4, grid, grid])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", 4, grid, grid])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return sum(int(np.prod(i.dims)) for i in inits if len(i.dims) >= 1)


def make_station(path: Path, hidden: int, blocks: int, seed: int = 0) -> int:
    """The station window MLP at width ``hidden`` with ``blocks`` residual layers; weights written tensor by tensor
    (a model above 2 GiB goes to an external data file: it never exists as one message)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(seed)
    layers = [(L_IN * C, hidden)] + [(hidden, hidden)] * blocks + [(hidden, H_OUT * C)]
    total = sum(i * o + o for i, o in layers) * 4
    external = total > 2**31 - 2**26
    data = path.with_suffix(".onnx.data")
    inits = []
    fh = open(data, "wb") if external else None  # noqa: SIM115 - closed below
    n = 0

    def add(name: str, arr: np.ndarray) -> None:
        nonlocal n
        n += arr.size
        if fh is None:
            inits.append(numpy_helper.from_array(arr, name))
            return
        t = onnx.TensorProto()
        t.name, t.data_type = name, TensorProto.FLOAT
        t.dims.extend(arr.shape)
        t.data_location = TensorProto.EXTERNAL
        for k, v in (("location", data.name), ("offset", str(fh.tell())), ("length", str(arr.nbytes))):
            e = t.external_data.add()
            e.key, e.value = k, v
        arr.tofile(fh)
        inits.append(t)

    for j, (i, o) in enumerate(layers):
        gain = 0.5 if 0 < j < len(layers) - 1 else 1.0
        add(f"l{j + 1}.weight", (rng.standard_normal((o, i), dtype=np.float32) * np.float32(gain / np.sqrt(i))))
        add(f"l{j + 1}.bias", (0.01 * rng.standard_normal(o)).astype(np.float32))
    if fh is not None:
        fh.close()
    inits += [
        numpy_helper.from_array(np.zeros(C, np.float32), "in_mean"),
        numpy_helper.from_array(np.ones(C, np.float32), "in_std"),
        numpy_helper.from_array(np.array([-1, L_IN * C], np.int64), "flat"),
        numpy_helper.from_array(np.array([-1, H_OUT, C], np.int64), "out_shape"),
        numpy_helper.from_array(np.array([L_IN - 1], np.int64), "last0"),
        numpy_helper.from_array(np.array([L_IN], np.int64), "last1"),
        numpy_helper.from_array(np.array([1], np.int64), "axis1"),
        numpy_helper.from_array(np.array(0.1, np.float32), "step_scale"),
    ]
    nodes = [
        helper.make_node("Sub", ["x", "in_mean"], ["xc"]),
        helper.make_node("Div", ["xc", "in_std"], ["xn"]),
        helper.make_node("Reshape", ["xn", "flat"], ["f"]),
        helper.make_node("Gemm", ["f", "l1.weight", "l1.bias"], ["g1"], transB=1),
        helper.make_node("Relu", ["g1"], ["h1"]),
    ]
    h = "h1"
    for j in range(2, blocks + 2):
        nodes += [
            helper.make_node("Gemm", [h, f"l{j}.weight", f"l{j}.bias"], [f"g{j}"], transB=1),
            helper.make_node("Relu", [f"g{j}"], [f"r{j}"]),
            helper.make_node("Add", [h, f"r{j}"], [f"h{j}"]),
        ]
        h = f"h{j}"
    last = blocks + 2
    nodes += [
        helper.make_node("Gemm", [h, f"l{last}.weight", f"l{last}.bias"], ["o"], transB=1),
        helper.make_node("Reshape", ["o", "out_shape"], ["o3"]),
        helper.make_node("Mul", ["o3", "step_scale"], ["d"]),
        helper.make_node("Slice", ["xn", "last0", "last1", "axis1"], ["xl"]),
        helper.make_node("Add", ["xl", "d"], ["yn"]),
        helper.make_node("Mul", ["yn", "in_std"], ["ys"]),
        helper.make_node("Add", ["ys", "in_mean"], ["y"]),
    ]
    g = helper.make_graph(
        nodes,
        "station_xl",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["B", L_IN, C])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["B", H_OUT, C])],
        inits,
    )
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    with open(path, "wb") as f:
        f.write(m.SerializeToString())
    return n + 2 * C


# --- measurement in the child ---------------------------------------------------------------------------


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                kids.setdefault(ppid, []).append(int(d))
            except (OSError, ValueError, IndexError):
                continue
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


class PeakMemory:
    """Peak of the summed PSS of this process and its descendants, sampled in a thread."""

    def __init__(self, every: float = 0.1) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, args=(every,), daemon=True)
        self._thread.start()

    def _loop(self, every: float) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, sum(_pss_kib(p) for p in _tree(os.getpid())) * 1024)
            self._stop.wait(every)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def _vmhwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


class Recording:
    """Wraps a sweep backend and keeps each task's time in its worker, and the wall time of the task phase."""

    def __init__(self, inner: object) -> None:
        self.inner = inner
        self.name = inner.name  # type: ignore[attr-defined]
        self.times: list[float] = []
        self.phase = 0.0

    @property
    def workers(self) -> int:
        return self.inner.workers  # type: ignore[attr-defined]

    def __enter__(self) -> Recording:
        self.inner.__enter__()  # type: ignore[attr-defined]
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.__exit__(*exc)  # type: ignore[attr-defined]

    def run(self, sweep, tasks, done) -> int:
        def rec(r) -> None:
            self.times.append(r.seconds)
            done(r)

        t0 = time.perf_counter()
        try:
            return self.inner.run(sweep, tasks, rec)  # type: ignore[attr-defined]
        finally:
            self.phase += time.perf_counter() - t0


def child(path: str, granularity: str, backend: str, workers: int, horizon: int, k: int, strategy: str) -> None:
    from edgetqs.core.contexts import read_record, select_contexts
    from edgetqs.core.model import load_model
    from edgetqs.core.rollout import Rollout, infer_spec
    from edgetqs.core.session import SharedSession
    from edgetqs.sensitivity.backends import make_backend
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep
    from edgetqs.sensitivity.tasks import SWEEP_THREADS, context_shares

    mem = PeakMemory()
    t0 = time.perf_counter()
    m = load_model(path)
    t_load = time.perf_counter() - t0
    spec = infer_spec(m)
    shape = [d or 1 for d in m.inputs[0].shape[1:]]
    rec = Path(path).with_suffix(".npy")
    rows = (k + 1) * (shape[0] + 8) if spec.mode == "window" else k + 4  # a window model reads windows cut from one record
    np.save(rec, np.random.default_rng(1).standard_normal((rows, *(shape[-1:] if spec.mode == "window" else shape))).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, k)
    # the step time on the kind of session the sweep uses (feed: weights shared and overridable; one thread)
    roll = Rollout(m, spec, ctx.statics, session=SharedSession(m, feed=strategy != "rebuild", threads=SWEEP_THREADS))
    roll.run(ctx.arrays, 1)  # warm-up
    times = []
    for _ in range(3):  # the median of three rollouts: the machines are shared
        t1 = time.perf_counter()
        roll.run(ctx.arrays, horizon)
        times.append((time.perf_counter() - t1) / horizon)
    step = float(np.median(times))
    del roll
    ray_start = 0.0
    if backend == "ray":
        import ray

        t1 = time.perf_counter()
        ray.init(address="local", num_cpus=workers, include_dashboard=False, log_to_driver=False, logging_level="WARNING")
        ray_start = time.perf_counter() - t1
    be = Recording(make_backend(backend, workers if backend != "serial" else None))
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=horizon, granularity=granularity), strategy=strategy, backend=be)  # type: ignore[arg-type]
    peak = mem.stop()
    if backend == "ray":
        ray.shutdown()
    first = m.inputs[0]
    print(
        json.dumps(
            {
                "params": m.n_params,
                "groups": len(s.groups),
                "tasks": len(s.groups) * len(context_shares(len(s.groups), k, m.n_params, first.shape[0])),
                "wall_s": s.wall_seconds,
                "load_s": t_load,
                "forward_calls": s.forward_calls,
                "step_s": step,
                "strategy": s.strategy,
                "peak_pss": peak,
                "vmhwm": _vmhwm(),
                "ray_start_s": ray_start,
                "task_s": be.times,
                "phase_s": be.phase,
                "workers": s.workers,
                "weight_bytes": sum(m.weight_array(w.name).nbytes for w in m.weights),
                "gammas": [g.gamma for g in s.groups],
            }
        )
    )


def makespan(times: list[float], workers: int) -> float:
    """Tasks in submission order, each to the worker free first (what the backends do)."""
    free = [0.0] * max(1, workers)
    for t in times:
        i = int(np.argmin(free))
        free[i] += t
    return max(free)


def main() -> None:
    ap = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    ap.add_argument("--family", choices=("conv", "station"), default="conv")
    ap.add_argument("--sizes", default=None, help="conv: 100k,1m,5m,20m,50m; station: 1m,48m,200m,600m")
    ap.add_argument("--horizon", type=int, default=6)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--grid", type=int, default=12)
    ap.add_argument("--workers", type=int, default=2, help="workers of the parallel backends")
    ap.add_argument("--granularity", default="tensor,block")
    ap.add_argument("--backends", default="serial,processes", help="comma-separated: serial, processes, ray")
    ap.add_argument("--strategy", default=None, help="sweep strategy (default: auto for conv, feed for station)")
    ap.add_argument("--json", type=Path, default=None, help="also write every row as JSON here")
    ap.add_argument("--child", nargs=7, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        p, g, b, w, t, k, st = a.child
        child(p, g, b, int(w), int(t), int(k), st)
        return
    strategy = a.strategy or ("auto" if a.family == "conv" else "feed")
    sizes = (a.sizes or ("100k,1m,5m,20m,50m" if a.family == "conv" else "48m,200m")).split(",")
    rows = []
    what = (
        f"conv state models on a {a.grid}x{a.grid} grid, 4 variables"
        if a.family == "conv"
        else "station window MLPs scaled up, 24 h x 6 in, 6 h out"
    )
    print(f"{what}; K={a.k} contexts, T={a.horizon}; gauss probe; strategy {strategy}; {os.cpu_count()} cores")
    print(
        "params | granularity | backend | workers | groups | tasks | T | sweep s | forward steps | step ms | bound s = (1 + groups/workers) x T x step "
        "| sweep/bound | peak MiB (all processes, PSS) | bytes/param | driver VmHWM MiB | load s | ray start s"
    )
    print(" | ".join(["---"] * 17))
    with tempfile.TemporaryDirectory() as d:
        for size in sizes:
            path = Path(d) / f"{a.family}_{size}.onnx"
            if a.family == "conv":
                make_conv(path, *CONV[size], a.grid)
            else:
                make_station(path, *STATION[size])
            for gran in a.granularity.split(","):
                for backend in a.backends.split(","):
                    w = 1 if backend == "serial" else a.workers
                    r = subprocess.run(
                        [sys.executable, __file__, "--child", str(path), gran, backend, str(w), str(a.horizon), str(a.k), strategy],
                        capture_output=True,
                        text=True,
                    )
                    if r.returncode != 0:
                        print(
                            f"{size} | {gran} | {backend} | {w} | failed: {(r.stderr.strip().splitlines() or ['?'])[-1][:300]}", flush=True
                        )
                        continue
                    x = json.loads(r.stdout.strip().splitlines()[-1])
                    x.update(size=size, granularity=gran, backend=backend)
                    # the reference rollout in the driver, then the groups' rollouts shared by the workers
                    bound = (1 + x["groups"] / x["workers"]) * a.horizon * x["step_s"]
                    x["bound_s"] = bound
                    rows.append(x)
                    print(
                        f"{x['params']:,} | {gran} | {backend} | {x['workers']} | {x['groups']} | {x['tasks']} | {a.horizon} | {x['wall_s']:.2f} | "
                        f"{x['forward_calls']} | {x['step_s'] * 1e3:.2f} | {bound:.2f} | {x['wall_s'] / bound:.2f} | {x['peak_pss'] / 2**20:,.0f} | "
                        f"{x['peak_pss'] / x['params']:.1f} | {x['vmhwm'] / 2**20:,.0f} | {x['load_s']:.1f} | "
                        f"{x['ray_start_s']:.1f}",
                        flush=True,
                    )
            path.unlink()
            path.with_suffix(".onnx.data").unlink(missing_ok=True)
    if a.json:
        a.json.write_text(json.dumps(rows, indent=1))
    print()
    by: dict[tuple[str, str, str], list[dict]] = {}
    for r in rows:  # a backend may be listed more than once (repeats against the machine's load): medians below
        by.setdefault((r["size"], r["granularity"], r["backend"]), []).append(r)
    differ = [
        f"{s}/{g}/{b}"
        for (s, g, b), rs in by.items()
        if (s, g, "serial") in by and any(r["gammas"] != by[(s, g, "serial")][0]["gammas"] for r in rs)
    ]
    print("every backend gave the serial gammas to the last bit" if not differ else f"gammas DIFFER from serial in: {', '.join(differ)}")

    def med(key: tuple[str, str, str], f) -> float:
        return float(np.median([f(r) for r in by[key]])) if key in by else float("nan")

    def idle(r: dict) -> float:
        """Worker-seconds not spent in tasks, per task: start, model opening, dispatch, the tail's imbalance."""
        return (r["phase_s"] * r["workers"] - sum(r["task_s"])) / max(len(r["task_s"]), 1)

    ray_rows = [r for r in rows if r["backend"] == "ray"]
    if ray_rows:
        print("\nRay against the local backends (same machine, same sweep; medians of the repeats; cluster start excluded, shown apart)")
        print(
            "params | granularity | runs ray/processes/serial | ray s | processes s | serial s | ray / processes | ray / serial "
            "| idle worker-s per task: ray | processes | ray start s"
        )
        print(" | ".join(["---"] * 11))
        for size, gran in dict.fromkeys((r["size"], r["granularity"]) for r in ray_rows):
            kr, kp, ks = (size, gran, "ray"), (size, gran, "processes"), (size, gran, "serial")
            wall = lambda r: r["wall_s"]  # noqa: E731
            rw, pw, sw = med(kr, wall), med(kp, wall), med(ks, wall)
            print(
                f"{by[kr][0]['params']:,} | {gran} | {len(by[kr])}/{len(by.get(kp, []))}/{len(by.get(ks, []))} | {rw:.2f} | {pw:.2f} | "
                f"{sw:.2f} | {rw / pw:.3f} | {rw / sw:.3f} | {med(kr, idle):.2f} | {med(kp, idle):.2f} | {med(kr, lambda r: r['ray_start_s']):.1f}"
            )
        print(
            "\nProjected sweep time on N machines like this one (a PROJECTION from the measured per-task times, not a measurement): "
            f"the driver's part (reference and state rollouts: sweep time - task phase) + worker start and dispatch (task phase - the "
            f"ideal schedule of the measured task times on this machine; paid once, in parallel on every machine) + the tasks "
            f"list-scheduled on N x {a.workers} workers + shipping the weights to each machine at an assumed {TRANSFER_BYTES_PER_S / 1e9:g} GB/s"
        )
        print(
            "params | granularity | tasks | sum of task s | driver s | worker start + dispatch s | N=1 s | N=4 s | N=16 s | speed-up at 16"
        )
        print(" | ".join(["---"] * 10))
        for r in ray_rows:
            w = r["workers"]
            fixed = r["wall_s"] - r["phase_s"]  # reference and state rollouts in the driver
            start = max(r["phase_s"] - makespan(r["task_s"], w), 0.0)  # worker start, model opening, dispatch: in parallel per machine
            proj = {}
            for n in (1, 4, 16):
                ship = 0.0 if n == 1 else r["weight_bytes"] / TRANSFER_BYTES_PER_S
                proj[n] = fixed + start + ship + makespan(r["task_s"], n * w)
            print(
                f"{r['params']:,} | {r['granularity']} | {len(r['task_s'])} | {sum(r['task_s']):.1f} | {fixed:.1f} | {start:.1f} | "
                f"{proj[1]:.1f} | {proj[4]:.1f} | {proj[16]:.1f} | {proj[1] / proj[16]:.1f}x"
            )


if __name__ == "__main__":
    main()
