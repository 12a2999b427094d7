"""TQS-PTQ against other ways to choose bits: measured rollout error at equal size.

    python scripts/bench_quality.py [--examples lorenz96,station,blizzard] [--bits 3,4,5,6,8] [--k 8] [--out docs/benchmarks.md]

For every bundled example: score on the first half of the record (TQS, gauss probe, tensor groups),
estimate Hessian traces for the HAWQ-v2 baseline on one-step prediction pairs from the same half,
then for budgets of --bits bits per weight on average (plus the non-weight constants), let every
method in `edgetqs.baselines.METHODS` choose precisions from the same menu (int2..int8 per channel,
fp16, fp32: scripts/bench_target.toml) and the same quantizer, and measure each plan by simulated
quantization on contexts from the second half (held out): normalised RMSE per lead time and per
variable. A cell is (example, variable, budget) at the last lead (Lorenz-96's 40 statistically
identical variables form one cell per budget); TQS wins a cell when its error is the lowest or within
1% of it. Writes the tables, the command and the machine to --out.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from _examples import halves  # scripts/ is on sys.path when a script runs

ROOT = Path(__file__).resolve().parents[1]


def _train_module():
    spec = importlib.util.spec_from_file_location("train_examples", ROOT / "scripts" / "train_examples.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def torch_model(name: str, model):
    """The example's torch source model (scripts/train_examples.py) with the ONNX weights loaded."""
    import torch

    tm = _train_module()
    w = {x.name: model.weight_array(x.name) for x in model.weights}
    if name == "lorenz96":
        g = model.proto.graph
        from onnx import numpy_helper

        consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        sub = next(n for n in g.node if n.op_type == "Sub")
        div = next(n for n in g.node if n.op_type == "Div")
        mul = [n for n in g.node if n.op_type == "Mul"][-1]
        net = tm.L96Net(mean=float(consts[sub.input[1]]), std=float(consts[div.input[1]]), dstd=float(consts[mul.input[1]]))
    elif name == "station":
        net = tm.StationNet(w["in_mean"], w["in_std"])
    elif name == "blizzard":
        net = tm.BlizzardNet(w["norm_mean"].ravel(), w["norm_std"].ravel())
    elif name == "patchtst":
        # sizes from the weights: patch x d embedding, [1, patches, d] positions, one block per blocks.N.q; 3 quantiles
        d, patch = w["embed.weight"].shape
        n_patches = w["pos"].shape[1]
        depth = len({k.split(".")[1] for k in w if k.startswith("blocks.")})
        c = model.inputs[0].shape[2]
        net = tm.PatchTST(c, n_patches * patch, w["head.weight"].shape[0] // 3, patch=patch, d=d, depth=depth)
    elif name == "seaice":
        # the normalisation scalars are graph constants: x - mean, then / std
        g = model.proto.graph
        from onnx import numpy_helper

        consts = {i.name: numpy_helper.to_array(i) for i in g.initializer}
        sub = next(n for n in g.node if n.op_type == "Sub" and n.input[0] == "x")
        div = next(n for n in g.node if n.op_type == "Div" and n.input[0] == sub.output[0])
        net = tm.IceUNet(float(consts[sub.input[1]]), float(consts[div.input[1]]))
    else:
        raise SystemExit(f"no torch source model for '{name}': the Hessian baseline needs one")
    state = {k: torch.tensor(np.asarray(v)) for k, v in w.items()}
    missing = [k for k in net.state_dict() if k not in state]
    assert not missing, missing
    net.load_state_dict({k: state[k].reshape(net.state_dict()[k].shape) for k in net.state_dict()})
    return net.eval()


def one_step_pairs(inp, n: int, span: tuple[float, float]):
    """Up to n (input, next truth) pairs from ``span`` of the record, as torch tensors."""
    import torch

    spec = inp.spec
    name = spec.pairs[0][0]
    data = inp.contexts.record.arrays[name].astype(np.float32)
    lo, hi = int(span[0] * len(data)), int(span[1] * len(data))
    if spec.mode == "window":
        L = inp.contexts.arrays[0].shape[1]
        H = [o for o in inp.model.outputs if o.name == spec.pairs[0][1]][0].shape[1]
        starts = np.linspace(lo, hi - L - H, n).astype(int)
        x = np.stack([data[s:s + L] for s in starts])
        y = np.stack([data[s + L:s + L + H] for s in starts])
    else:
        starts = np.linspace(lo, hi - 2, n).astype(int)
        x, y = data[starts], data[starts + 1]
    statics = [torch.tensor(np.broadcast_to(inp.contexts.statics[s], (len(starts),) + inp.contexts.statics[s].shape).copy())
               for s in spec.static]
    return torch.tensor(x), torch.tensor(y), statics


def hessian_traces(name: str, inp, scores, n_pairs: int, samples: int):
    import torch

    from edgetqs.baselines import hutchinson_traces

    net = torch_model(name, inp.model)
    for p in net.parameters():
        p.requires_grad_(True)
    x, y, statics = one_step_pairs(inp, n_pairs, (0.0, 0.5))
    rec = inp.contexts.record.arrays[inp.spec.pairs[0][0]]
    ax = 1 if inp.spec.mode == "state" and rec.ndim > 2 else rec.ndim - 1
    std = torch.tensor(np.moveaxis(rec, ax, 0).reshape(rec.shape[ax], -1).std(axis=1).astype(np.float32))
    shape = [1] * y.ndim
    shape[ax if inp.spec.mode == "state" else -1] = -1
    std = std.reshape(shape)

    def loss():
        out = net(x, *statics)
        pred = x + out if inp.spec.increment else out
        return (((pred - y) / std) ** 2).mean()

    params = dict(net.named_parameters())
    groups = {g.name: [t for t in g.tensors if t in params] for g in scores.groups}
    buffers = [t for g in scores.groups for t in g.tensors if t not in params]
    traces, secs, hvps = hutchinson_traces(net, loss, groups, samples=samples)
    return traces, secs, hvps, buffers


def measure_grid(model, spec, contexts, weights, horizon, ref):
    """nRMSE [lead, variable] of the plan's simulated quantization vs float (spread of the float trajectories)."""
    from edgetqs.check import canonical
    from edgetqs.rollout import Rollout

    q = Rollout(model, spec, contexts.statics, model_bytes=model.with_weights(weights)).run(contexts.arrays, horizon)
    sd = spec.to_dict()
    a = canonical(q.steps[0], sd).astype(np.float64)
    b = canonical(ref[0], sd).astype(np.float64)
    spread = b.transpose(2, 0, 1, 3).reshape(b.shape[2], -1).std(axis=1)
    spread = np.where(spread > 0, spread, 1.0)
    with np.errstate(all="ignore"):
        g = np.sqrt(np.mean((a - b) ** 2, axis=(1, 3))) / spread
    return np.where(np.isfinite(g), g, np.inf)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--bits", default="3,4,5,6,8", help="average bits per weight of the budgets")
    ap.add_argument("--k", type=int, default=8)
    ap.add_argument("--hessian-pairs", type=int, default=64)
    ap.add_argument("--hessian-samples", type=int, default=64)
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    a = ap.parse_args()

    from edgetqs.baselines import METHODS, method_plan
    from edgetqs.evaluate import simulated_weights
    from edgetqs.plan import InfeasibleBudgetError, PlanOptions
    from edgetqs.refine import refine
    from edgetqs.rollout import Rollout
    from edgetqs.targets import load_target
    from edgetqs.tqs import ProbeSettings, run_sweep

    target = load_target(ROOT / "scripts" / "bench_target.toml")
    ALL = (*METHODS, "tqs-ladder", "tqs-refine", "tqs-ladder-refine")
    VARIANTS = ("tqs", "tqs-ladder", "tqs-refine", "tqs-ladder-refine")
    LADDER = (2, 3, 4, 5, 6, 8)
    bits = [float(b) for b in a.bits.split(",")]
    lines: list[str] = []

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    emit("## Cost of the sensitivity estimates\n")
    emit("example | weights | TQS groups | TQS sweep s | TQS forward calls | TQS with --ladder s | Hessian (Hutchinson) s | Hessian-vector products | one-step pairs")
    emit("--- | --- | --- | --- | --- | --- | --- | --- | ---")
    cells: dict = {}  # (example, variable, bits) -> {method: error at last lead}
    leads_table: list[str] = []
    overall_cells: dict = {}  # (example, bits) -> {method: overall error at the last lead}
    notes: list[str] = []
    for name in a.examples.split(","):
        _, horizon, train, held = halves(name, a.k)
        m = train.model
        t0 = time.perf_counter()
        scores = run_sweep(m, train.spec, train.contexts, ProbeSettings(horizon=horizon))
        t_tqs = time.perf_counter() - t0
        t0 = time.perf_counter()
        scores_l = run_sweep(m, train.spec, train.contexts, ProbeSettings(horizon=horizon, ladder=LADDER))
        t_ladder = time.perf_counter() - t0
        traces, t_h, hvps, buffers = hessian_traces(name, train, scores, a.hessian_pairs, a.hessian_samples)
        if buffers:
            notes.append(f"{name}: {', '.join(buffers)} are buffers in the torch model (no gradient, no trace): the Hessian baseline keeps them in fp32, as HAWQ quantizes parameters only")
        emit(f"{name} | {sum(w.size for w in m.weights):,} | {len(scores.groups)} | {t_tqs:.2f} | {scores.forward_calls} | {t_ladder:.2f} | {t_h:.2f} | {hvps} | {a.hessian_pairs}")
        ref = Rollout(m, held.spec, held.contexts.statics, model_bytes=m.bytes).run(held.contexts.arrays, horizon).steps
        n_w = sum(w.size for w in m.weights)
        fixed = m.fixed_bytes
        variables = list(held.contexts.variables) if len(held.contexts.variables) <= 12 else ["all"]
        for b in bits:
            budget = int(fixed + n_w * b / 8)
            grids = {}
            for method in ALL:
                seeds = range(a.random_seeds) if method == "random" else [0]
                per_seed = []
                for seed in seeds:
                    try:
                        if method == "tqs-ladder":  # the tool with --ladder: a TQS variant, not a competitor
                            plan = method_plan("tqs", scores_l, m, target, PlanOptions(runtime="ort", budget_bytes=budget))
                        elif method == "tqs-refine":  # the tool with --refine: candidates measured on the scoring contexts
                            plan = refine(scores, m, target, PlanOptions(runtime="ort", budget_bytes=budget), train.spec, train.contexts)[0]
                        elif method == "tqs-ladder-refine":
                            plan = refine(scores_l, m, target, PlanOptions(runtime="ort", budget_bytes=budget), train.spec, train.contexts)[0]
                        else:
                            plan = method_plan(method, scores, m, target, PlanOptions(runtime="ort", budget_bytes=budget), traces=traces,
                                               seed=seed, fp32=tuple(buffers))
                    except InfeasibleBudgetError:
                        break
                    per_seed.append(measure_grid(m, held.spec, held.contexts, simulated_weights(m, plan), horizon, ref))
                if per_seed:
                    grids[method] = np.mean(per_seed, axis=0)  # random: the mean error over seeds
            for method, g in grids.items():
                last = g.shape[0]
                overall = np.sqrt(np.mean(g ** 2, axis=1))
                overall_cells.setdefault((name, b), {})[method] = float(overall[-1])
                picks = sorted({1, last // 2, last})
                leads_table.append(f"{name} | {b:g} | {budget:,} | {method} | " + " | ".join(f"{overall[p - 1]:.4g}" for p in picks)
                                   + f" | leads {', '.join(map(str, picks))}")
            for j, v in enumerate(variables):
                key = (name, v, b)
                cells[key] = {}
                for method, g in grids.items():
                    cells[key][method] = float(np.sqrt(np.mean(g[-1] ** 2))) if v == "all" else float(g[-1, j])
    emit()
    emit("## Overall normalised RMSE vs float by lead (held-out contexts)\n")
    emit("example | bits/weight | budget B | method | error at leads | (leads)")
    emit("--- | --- | --- | --- | --- | ---")
    for row in leads_table:
        emit(row)
    emit()
    emit("## Per variable at the last lead: the win-rate cells\n")
    others = [x for x in METHODS if x != "tqs"]
    emit("example | variable | bits | " + " | ".join(ALL) + " | " + " | ".join(f"{v} wins" for v in VARIANTS))
    emit(" | ".join(["---"] * (len(ALL) + 3 + len(VARIANTS))))
    rates = {}
    losses: dict[str, list[str]] = {v: [] for v in VARIANTS}
    for (name, v, b), errs in cells.items():
        marks = []
        for variant in VARIANTS:
            if variant not in errs:
                marks.append("n/a")
                continue
            best_other = min((errs[o] for o in others if o in errs), default=np.inf)
            win = errs[variant] <= best_other * 1.01
            w, t = rates.get(variant, (0, 0))
            rates[variant] = (w + win, t + 1)
            marks.append("yes" if win else "NO")
            if not win:
                who = min((o for o in others if o in errs), key=lambda o: errs[o])
                losses[variant].append(f"{name}/{v} at {b:g} bits: {variant} {errs[variant]:.4g} vs {who} {errs[who]:.4g}")
        emit(f"{name} | {v} | {b:g} | " + " | ".join(f"{errs[x]:.4g}" if x in errs else "n/a" for x in ALL) + " | " + " | ".join(marks))
    emit()
    for variant, (w, t) in rates.items():
        label = {"tqs": "TQS (default: gauss probe)", "tqs-ladder": "TQS with --ladder 2,3,4,5,6,8 (quant probe at each bit-width)",
                 "tqs-refine": "TQS with --refine (candidates measured on the scoring contexts)",
                 "tqs-ladder-refine": "TQS with --ladder and --refine"}[variant]
        emit(f"**{label} win rate: {w} of {t} cells ({w / max(t, 1):.0%})** (best or within 1% of the best non-TQS method).")
    emit()
    emit("Over all variables at once (the quantity TQS minimises: RMS over variables of the normalised error at the last lead), "
         "one cell per example and budget:\n")
    for variant in VARIANTS:
        w = t = 0
        for errs in overall_cells.values():
            if variant in errs:
                best_other = min((errs[o] for o in others if o in errs), default=np.inf)
                w += errs[variant] <= best_other * 1.01
                t += 1
        emit(f"- {variant}: best or within 1% in {w} of {t} example x budget cells")
    for variant, ls in losses.items():
        if ls:
            emit(f"\nCells {variant} loses:\n")
            for x in ls:
                emit(f"- {x}")
    for n in notes:
        emit(f"\nNote: {n}.")
    header = [
        "# Benchmarks: TQS-PTQ against other ways to choose bits\n",
        f"Produced by `python {' '.join(['scripts/bench_quality.py'] + sys.argv[1:])}` on {platform.machine()} "
        f"({os.cpu_count()} cores, {platform.processor() or platform.platform()}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}.\n",
        "Methods (see `edgetqs/baselines.py`): **tqs** (our default, gains measured along the rollout), **tqs-paper** "
        "(the published objective gamma * 2^-b), **weight-error** (relative quantization error only, no model run), "
        "**hessian** (HAWQ-v2: Hutchinson trace of the one-step loss Hessian times the squared weight perturbation), "
        f"**random** (random gains, mean error over {a.random_seeds} seeds), **uniform** (int8 everywhere if it fits, else int4). "
        "**tqs-ladder** is the tool with `--ladder 2,3,4,5,6,8`: the quant probe's gain measured at each bit-width prices each option; "
        "**tqs-refine** is the tool with `--refine`: plans with the lowest tier raised step by step (none, 3, 4, 5, 6 bits) are "
        "rolled out by simulated quantization on the *scoring* contexts and the best is kept; **tqs-ladder-refine** combines both. "
        "The TQS variants are not counted as competitors of one another. "
        "All use the same precision menu, quantizer and knapsack; plans are measured by simulated quantization on held-out contexts "
        "(second half of each record; scoring and Hessians use the first half). Errors are normalised RMSE against the float "
        "rollout; n/a = the budget is below what the method can reach.\n",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(header + lines) + "\n")
    print(f"\nwrote {a.out}")


if __name__ == "__main__":
    main()
