"""Benchmark the TQS sweep on the bundled examples.

    python scripts/bench_score.py [--examples lorenz96,station,blizzard] [--k 8] [--repeats 3]

For each example (tensor granularity, K contexts, the example's horizon T) it prints:
  - sweep wall time (edgetqs, one session, weights fed as inputs, contexts batched; best of --repeats),
  - the lower bound (groups + 1) x T x (median time of one batched forward step of the plain model),
  - their ratio,
  - the naive approach: a new onnxruntime session per group with the perturbed initializers baked in
    (plus one for the reference rollout), (a) contexts batched as ours, (b) one context at a time; and
    our speed-up over each. Our sweep also runs the model's own state-perturbation rollout.
Also the sweep with --workers 2. Figures are wall seconds on this machine: compare ratios within one run.
"""

from __future__ import annotations

import argparse
import time

import numpy as np


def median_step(session, feeds: dict, n: int = 200) -> float:
    for _ in range(10):
        session.run(None, feeds)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter()
        session.run(None, feeds)
        ts.append(time.perf_counter() - t0)
    return float(np.median(ts))


def naive_sweep(model, spec, ctx, groups, settings, horizon: int, batched: bool) -> float:
    """A new session per group with the perturbed weights baked into the initializers, plus the
    unperturbed reference rollout any implementation needs (no state exponent, no divergence maths)."""
    import onnx
    import onnxruntime as ort
    from onnx import numpy_helper

    from edgetqs.sensitivity.probes import probe_delta

    t0 = time.perf_counter()
    for _, tensors in [("reference", ())] + list(groups):
        new = probe_delta(model, tensors, settings) if tensors else {}
        proto = onnx.ModelProto()
        proto.CopyFrom(model.proto)
        for init in proto.graph.initializer:
            if init.name in new:
                init.CopyFrom(numpy_helper.from_array(new[init.name], init.name))
        sess = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
        chunks = [slice(0, ctx.k)] if batched else [slice(i, i + 1) for i in range(ctx.k)]
        for sl in chunks:
            state = [a[sl] for a in ctx.arrays]
            statics = {k: np.repeat(v[None], state[0].shape[0], axis=0) for k, v in ctx.statics.items()}
            for _ in range(horizon):
                feeds = {**statics, **{p[0]: s for p, s in zip(spec.pairs, state)}}
                outs = sess.run([p[1] for p in spec.pairs], feeds)
                if spec.mode == "window":
                    y = outs[0] + (state[0][:, -1:] if spec.increment else 0)
                    state = [np.concatenate([state[0][:, y.shape[1] :], y], axis=1)]
                else:
                    state = [o + s if spec.increment else o for o, s in zip(outs, state)]
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()

    import onnxruntime as ort

    from edgetqs.core.inputs import resolve
    from edgetqs.core.project import load_project
    from edgetqs.examples import example_path
    from edgetqs.sensitivity.groups import make_groups
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    rows = []
    for name in a.examples.split(","):
        proj = load_project(example_path(name) / "edgetqs.toml")
        inp = resolve(None, proj, k=a.k)
        horizon = int(proj.score.get("horizon", 20))
        settings = ProbeSettings(horizon=horizon, granularity="tensor")
        groups = make_groups(inp.model, "tensor")
        walls = []
        for _ in range(a.repeats):
            s = run_sweep(inp.model, inp.spec, inp.contexts, settings)
            walls.append(s.wall_seconds)
        wall = min(walls)
        w2 = min(run_sweep(inp.model, inp.spec, inp.contexts, settings, workers=2).wall_seconds for _ in range(max(1, a.repeats - 1)))
        plain = ort.InferenceSession(inp.model.bytes, providers=["CPUExecutionProvider"])
        feeds = {p[0]: c for p, c in zip(inp.spec.pairs, inp.contexts.arrays)}
        feeds.update({k: np.repeat(v[None], inp.contexts.k, axis=0) for k, v in inp.contexts.statics.items()})
        step = median_step(plain, feeds)
        bound = (len(groups) + 1) * horizon * step
        naive_b = naive_sweep(inp.model, inp.spec, inp.contexts, groups, settings, horizon, batched=True)
        naive_u = naive_sweep(inp.model, inp.spec, inp.contexts, groups, settings, horizon, batched=False)
        rows.append(
            (
                name,
                inp.model.n_params,
                len(groups),
                horizon,
                s.forward_calls,
                wall,
                w2,
                step * 1e3,
                bound,
                wall / bound,
                naive_b,
                naive_b / wall,
                naive_u,
                naive_u / wall,
            )
        )
    hdr = (
        "example",
        "params",
        "groups",
        "T",
        "fwd calls",
        "sweep s",
        "2 workers s",
        "step ms",
        "bound s",
        "sweep/bound",
        "naive(batched) s",
        "speed-up",
        "naive(1 ctx) s",
        "speed-up",
    )
    print(" | ".join(hdr))
    print(" | ".join("---" for _ in hdr))
    for r in rows:
        print(
            " | ".join(
                [
                    r[0],
                    f"{r[1]:,}",
                    str(r[2]),
                    str(r[3]),
                    str(r[4]),
                    f"{r[5]:.3f}",
                    f"{r[6]:.3f}",
                    f"{r[7]:.3f}",
                    f"{r[8]:.3f}",
                    f"{r[9]:.2f}x",
                    f"{r[10]:.3f}",
                    f"{r[11]:.1f}x",
                    f"{r[12]:.3f}",
                    f"{r[13]:.1f}x",
                ]
            )
        )
    print(
        "bound = (groups + 1) x T x median batched step of the plain model; the sweep also runs the state-perturbation rollout (one more T)."
    )


if __name__ == "__main__":
    main()
