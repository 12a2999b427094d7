"""Sweep cost as the model grows: a family of generated convolutional state models, ~100 K to ~50 M parameters.

    python scripts/bench_scale.py [--sizes 100k,1m,5m,20m,50m] [--horizon 6] [--k 2] [--grid 12]

Each model maps a state [B, 4, G, G] to the next (x + 0.1 * head(residual conv blocks(x))), built
directly as ONNX with seeded weights. Each configuration (size x granularity tensor|block x workers
1|2) runs in a fresh child process, so its peak memory (VmHWM) is its own. Printed per configuration:
parameters, groups, horizon, wall seconds of the sweep, forward steps, time per step (a float
rollout of the same contexts, divided by its steps), the lower bound (groups + 1) x T x step time
and the ratio to it, peak memory; then least-squares growth exponents of wall time against
parameters and against groups.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

SIZES = {"100k": (48, 4), "1m": (128, 6), "5m": (256, 8), "20m": (512, 8), "50m": (768, 9)}  # (channels, residual blocks)


def make_model(path: Path, channels: int, blocks: int, grid: int, seed: int = 0) -> int:
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


def _vmhwm() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    return 0


def child(path: str, granularity: str, workers: int, horizon: int, k: int) -> None:
    from edgetqs.core.contexts import read_record, select_contexts
    from edgetqs.core.model import load_model
    from edgetqs.core.rollout import Rollout, infer_spec
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    m = load_model(path)
    spec = infer_spec(m)
    shape = m.inputs[0].shape[1:]
    rec = Path(path).with_suffix(".npy")
    np.save(rec, np.random.default_rng(1).standard_normal((k + 4, *shape)).astype(np.float32))
    ctx = select_contexts(read_record(rec, spec), m, spec, k)
    roll = Rollout(m, spec, ctx.statics, model_bytes=m.bytes)
    roll.run(ctx.arrays, 1)  # warm-up
    times = []
    for _ in range(3):  # the median of three rollouts: the machines are shared
        t0 = time.perf_counter()
        roll.run(ctx.arrays, horizon)
        times.append((time.perf_counter() - t0) / horizon)
    step = float(np.median(times))
    s = run_sweep(m, spec, ctx, ProbeSettings(horizon=horizon, granularity=granularity), workers=workers)
    print(
        json.dumps(
            {
                "groups": len(s.groups),
                "wall_s": s.wall_seconds,
                "forward_calls": s.forward_calls,
                "step_s": step,
                "strategy": s.strategy,
                "peak_bytes": _vmhwm(),
            }
        )
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", default="100k,1m,5m,20m,50m")
    ap.add_argument("--horizon", type=int, default=6)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--grid", type=int, default=12)
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--child", nargs=5, metavar=("MODEL", "GRAN", "WORKERS", "T", "K"), help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.child:
        p, g, w, t, k = a.child
        child(p, g, int(w), int(t), int(k))
        return
    rows = []
    print(f"conv state models on a {a.grid}x{a.grid} grid, 4 variables, K={a.k} contexts, T={a.horizon}; gauss probe; strategy auto")
    print(
        "params | granularity | workers | groups | T | sweep s | forward steps | step ms | bound s = (groups+1) x T x step | sweep/bound | peak MiB | strategy"
    )
    print(" | ".join(["---"] * 12))
    with tempfile.TemporaryDirectory() as d:
        for size in a.sizes.split(","):
            c, b = SIZES[size]
            path = Path(d) / f"scale_{size}.onnx"
            n = make_model(path, c, b, a.grid)
            for gran in ("tensor", "block"):
                for w in (int(x) for x in a.workers.split(",")):
                    r = subprocess.run(
                        [sys.executable, __file__, "--child", str(path), gran, str(w), str(a.horizon), str(a.k)],
                        capture_output=True,
                        text=True,
                    )
                    if r.returncode != 0:
                        print(f"{n:,} | {gran} | {w} | failed: {r.stderr.strip().splitlines()[-1][:200]}")
                        continue
                    x = json.loads(r.stdout.strip().splitlines()[-1])
                    bound = (x["groups"] + 1) * a.horizon * x["step_s"]
                    rows.append((n, gran, w, x["groups"], x["wall_s"]))
                    print(
                        f"{n:,} | {gran} | {w} | {x['groups']} | {a.horizon} | {x['wall_s']:.2f} | {x['forward_calls']} | {x['step_s'] * 1e3:.2f} | "
                        f"{bound:.2f} | {x['wall_s'] / bound:.2f} | {x['peak_bytes'] / 2**20:.0f} | {x['strategy']}",
                        flush=True,
                    )
    print()
    for gran in ("tensor", "block"):
        for w in (int(x) for x in a.workers.split(",")):
            pts = [(n, g, s) for n, gg, ww, g, s in rows if gg == gran and ww == w]
            if len(pts) >= 2:
                ln = np.log([p[0] for p in pts])
                ls = np.log([p[2] for p in pts])
                slope = np.polyfit(ln, ls, 1)[0]
                per_group = np.log([p[2] / (p[1] + 1) for p in pts])
                slope_g = np.polyfit(ln, per_group, 1)[0]
                print(f"{gran}, workers {w}: sweep time ~ params^{slope:.2f}; time per (group+1) ~ params^{slope_g:.2f}")


if __name__ == "__main__":
    main()
