"""TQS allocation against the allocations and roundings users have today, at matched bytes, with intervals.

    python scripts/bench_quality.py [--examples lorenz96,station,blizzard] [--bits 3,4,5,6,8] [--k-score 32] [--k-held 48]
                                    [--roundings rtn,gptq] [--rescore-budget 400] [--threads 0] [--out docs/benchmarks.md]
                                    [--results FILE.json] [--merge A.json,B.json]

For every bundled example, scoring (the TQS sweep, the ladder, the re-scoring search, GPTQ's calibration
and the Hessian baseline's pairs) uses the example's *score* split of its record; every plan is measured
on contexts from its *held-out* split, which neither training nor scoring saw (the splits are in each
example's card.json; `scripts/_examples.py`). A budget is the size of the paper's uniform baseline: every
tensor at b bits per output channel, scales counted, for b in --bits; every method fills the same bytes
from the same precision menu (int2..int8 per channel, fp16, fp32: scripts/bench_target.toml).

Methods (`edgetqs.allocation.methods`): TQS plain (gauss gains), TQS --ladder (quant-probe gains per
bit-width), TQS re-scored in context (the default refinement: `edgetqs.allocation.rescore`), the published
objective with ranked gammas (tqs-paper), uniform b bits (the paper's RTN baseline; with GPTQ rounding its GPTQ
baseline), weight-error (data-free), HAWQ-v2 Hessian trace, random (mean over seeds). Each rounding in
--roundings is applied equally to every method (its own table).

A cell is (example, budget) on the overall error at the horizon (each example weighs the same: the same
number of budgets), then (example, variable, budget). Per cell: the RMS over held-out contexts of each
context's normalised error, a paired bootstrap 95% interval, and each TQS variant's verdict against the best
non-TQS method (`edgetqs.allocation.compare`): win / tie / loss, saturated cells (every method above 1)
apart. Writes the tables, the headline lines, the costs, the command and the machine to --out.

Every sweep (the gauss probe and each bit-width of the ladder's quant probe) goes through the score cache
(`edgetqs.sensitivity.cache`, ``EDGETQS_CACHE_DIR``): a second run reuses it, a killed one resumes it, and the
ladder reuses the gauss sweep instead of repeating it. The measured per-context errors of every cell are saved
to --results (default: --out with the suffix .json) as each budget is measured; ``--merge`` writes the report from
such files without measuring again (examples run as separate processes, then one table).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TQS = ("tqs", "tqs-ladder", "tqs-rescored")
OTHERS = ("uniform", "tqs-paper", "weight-error", "hessian", "random")
LADDER = (2, 3, 4, 5, 6, 8)


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
        H = next(o for o in inp.model.outputs if o.name == spec.pairs[0][1]).shape[1]
        starts = np.linspace(lo, hi - L - H, n).astype(int)
        x = np.stack([data[s : s + L] for s in starts])
        y = np.stack([data[s + L : s + L + H] for s in starts])
    else:
        starts = np.linspace(lo, hi - 2, n).astype(int)
        x, y = data[starts], data[starts + 1]
    statics = [
        torch.tensor(np.broadcast_to(inp.contexts.statics[s], (len(starts),) + inp.contexts.statics[s].shape).copy()) for s in spec.static
    ]
    return torch.tensor(x), torch.tensor(y), statics


def hessian_traces(name: str, inp, scores, n_pairs: int, samples: int):
    import torch

    from edgetqs.allocation.methods import hutchinson_traces
    from edgetqs.core.rollout import parse_slice

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

    index = parse_slice(inp.spec.output_slice) if inp.spec.output_slice else None  # e.g. the median of a quantile head

    def loss():
        out = net(x, *statics)
        out = out[index] if index is not None else out
        pred = x + out if inp.spec.increment else out
        return (((pred - y) / std) ** 2).mean()

    params = dict(net.named_parameters())
    groups = {g.name: [t for t in g.tensors if t in params] for g in scores.groups}
    buffers = [t for g in scores.groups for t in g.tensors if t not in params]
    traces, secs, hvps = hutchinson_traces(net, loss, groups, samples=samples)
    return traces, secs, hvps, buffers


@dataclass
class Example:
    name: str
    horizon: int
    score: object
    held: object
    variables: list[str]
    costs: dict = field(default_factory=dict)
    budgets: dict = field(default_factory=dict)
    buffers: list = field(default_factory=list)
    n_weights: int = 0
    n_tensors: int = 0
    k_score: int = 0
    k_held: int = 0

    def to_json(self) -> dict:
        keep = ("name", "horizon", "variables", "costs", "buffers", "n_weights", "n_tensors", "k_score", "k_held")
        return {**{k: getattr(self, k) for k in keep}, "budgets": {str(b): v for b, v in self.budgets.items()}}

    @classmethod
    def from_json(cls, d: dict) -> Example:
        ex = cls(d["name"], d["horizon"], None, None, d["variables"])
        for k in ("costs", "buffers", "n_weights", "n_tensors", "k_score", "k_held"):
            setattr(ex, k, d[k])
        ex.budgets = {int(b): v for b, v in d["budgets"].items()}
        return ex


def load_example(name: str, k_score: int, k_held: int) -> Example:
    import _examples  # scripts/ is on sys.path when a script runs

    room = _examples.card(name).get("room") or {}  # contexts each split holds: fewer where the record is short (blizzard)
    k_score, k_held = min(k_score, int(room.get("score", k_score))), min(k_held, int(room.get("heldout", k_held)))
    _, horizon, score, _ = _examples.splits(name, k_score)
    _, _, _, held = _examples.splits(name, k_held)
    variables = list(held.contexts.variables)
    n_var = sum(len(s) for s in held.contexts.spreads)
    if len(variables) != n_var:
        variables = [f"var{i}" for i in range(n_var)]
    m = score.model
    return Example(
        name,
        horizon,
        score,
        held,
        variables,
        n_weights=sum(w.size for w in m.weights),
        n_tensors=len(m.weights),
        k_score=score.contexts.k,
        k_held=held.contexts.k,
    )


def sweeps(ex: Example, ladder_bits: tuple[int, ...] = LADDER, log=print):
    """(gauss scores, the same with the ladder's quant-probe gains): each sweep from the score cache or computed into
    it (checkpointed: a killed run resumes), the ladder on top of the gauss sweep rather than a second one."""
    from edgetqs.sensitivity.cache import score_cached
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import ladder_settings, with_ladder

    m, sc = ex.score.model, ex.score
    settings = ProbeSettings(horizon=ex.horizon)
    scores, _, _ = score_cached(m, sc.spec, sc.contexts, settings, log=log)
    if not ladder_bits:
        return scores, None
    quant = {b: score_cached(m, sc.spec, sc.contexts, ladder_settings(settings, b, scores.horizon), log=log)[0] for b in ladder_bits}
    return scores, with_ladder(scores, quant)


def plans_for(ex: Example, target, budgets: dict[int, int], rounding: str, traces, buffers, rescore_settings, scores, ladder, seeds: int):
    """(bits, {method: [plans]}) per budget (random: one plan per seed), one budget at a time, so that the caller
    measures and saves each before the next one's re-scoring runs."""
    from edgetqs.allocation.methods import method_plan
    from edgetqs.allocation.plan import InfeasibleBudgetError, PlanOptions

    m, inp = ex.score.model, ex.score
    for b, budget in budgets.items():
        opts = PlanOptions(runtime="ort", budget_bytes=budget, rounding=rounding)
        cell: dict[str, list] = {}
        common = dict(traces=traces, fp32=tuple(buffers), ladder=ladder, spec=inp.spec, contexts=inp.contexts, rescore=rescore_settings)
        for method in (*TQS, *OTHERS):
            if (method == "tqs-ladder" and ladder is None) or (method == "hessian" and traces is None):
                continue  # --ladder '' or --hessian-samples 0: not measured (n/a in the tables)
            name = {"uniform": "uniform-bits"}.get(method, method)
            try:
                t0 = time.perf_counter()
                cell[method] = [
                    method_plan(name, scores, m, target, opts, seed=sd, bits=b, **common)
                    for sd in (range(seeds) if method == "random" else [0])
                ]
                if method == "tqs-rescored":
                    ex.costs.setdefault(f"rescore {rounding}", []).append(
                        (time.perf_counter() - t0, cell[method][0].refinement["rollouts"])
                    )
            except InfeasibleBudgetError:
                pass
        yield b, cell


def measure_cell(ex: Example, cell: dict[str, list], rounding: str, threads: int = 0):
    """{method: (per-context overall errors [K], per-context per-variable errors [K, V])}; random: mean over seeds.

    Methods often choose the same plan (most at 8 bits): each distinct plan is rolled out once."""
    from edgetqs.allocation.evaluate import measure
    from edgetqs.allocation.rounding import Rounder

    held, score = ex.held, ex.score
    rounder = Rounder(held.model, rounding, score.contexts, score.spec, ex.horizon)  # GPTQ calibrated on the score split
    seen: dict[tuple, object] = {}
    out = {}
    for method, plans in cell.items():
        per_c, per_cv = [], []
        for p in plans:
            key = tuple(sorted(p.precisions().items()))
            if key not in seen:
                seen[key] = measure(held.model, held.spec, held.contexts, rounder.plan_values(p), ex.horizon, ex.ref, threads=threads)
            mm = seen[key]
            per_c.append(np.asarray(mm.per_context))
            per_cv.append(mm.per_context_variable)
        out[method] = (np.mean(per_c, axis=0), np.mean(per_cv, axis=0))
    ex.costs["held-out rollouts"] = ex.costs.get("held-out rollouts", 0) + len(seen)
    return out


def save_results(path: Path, exs: list[Example], results: dict, plans_seen: dict, args: dict) -> None:
    """Every example's facts and costs and every cell's per-context errors and plans, for --merge."""
    cells = [
        {
            "rounding": r,
            "example": name,
            "bits": b,
            "plans": plans_seen[r][(name, b)],
            "errors": {k: {"per_context": v[0].tolist(), "per_context_variable": v[1].tolist()} for k, v in meas.items()},
        }
        for r, res in results.items()
        for (name, b), meas in res.items()
    ]
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps({"args": args, "examples": [e.to_json() for e in exs], "cells": cells}))
    tmp.replace(path)


def load_results(paths: list[Path]) -> tuple[list[Example], dict, dict, list[dict]]:
    exs: list[Example] = []
    results: dict = {}
    plans_seen: dict = {}
    args = []
    for p in paths:
        d = json.loads(p.read_text())
        args.append(d["args"])
        exs += [Example.from_json(e) for e in d["examples"]]
        for c in d["cells"]:
            key = (c["example"], int(c["bits"]))
            results.setdefault(c["rounding"], {})[key] = {
                k: (np.asarray(v["per_context"], dtype=float), np.asarray(v["per_context_variable"], dtype=float))
                for k, v in c["errors"].items()
            }
            plans_seen.setdefault(c["rounding"], {})[key] = c["plans"]
    return exs, results, plans_seen, args


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", default="lorenz96,station,blizzard")
    ap.add_argument("--bits", default="3,4,5,6,8", help="the uniform baselines' bit-widths; each one's size is a budget")
    ap.add_argument("--k-score", type=int, default=32)
    ap.add_argument("--k-held", type=int, default=48)
    ap.add_argument("--roundings", default="rtn,gptq")
    ap.add_argument("--rescore-budget", type=int, default=400)
    ap.add_argument("--hessian-pairs", type=int, default=64)
    ap.add_argument("--hessian-samples", type=int, default=64)
    ap.add_argument("--random-seeds", type=int, default=3)
    ap.add_argument("--bootstrap", type=int, default=2000)
    ap.add_argument("--ladder", default=",".join(map(str, LADDER)), help="bit-widths of the ladder's quant probe; empty: no tqs-ladder")
    ap.add_argument(
        "--threads", type=int, default=0, help="intra-op threads of every session (0: onnxruntime's default; 1 when runs share cores)"
    )
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "benchmarks.md")
    ap.add_argument("--results", type=Path, default=None, help="per-context errors of every cell, saved as each budget is measured")
    ap.add_argument("--merge", default="", help="comma-separated --results files: write the report from them, measuring nothing")
    a = ap.parse_args()
    a.results = a.results or a.out.with_suffix(".json")

    from edgetqs.allocation.compare import bootstrap_samples, cell_error, headline, interval, judge
    from edgetqs.allocation.methods import method_plan
    from edgetqs.allocation.plan import PlanOptions
    from edgetqs.allocation.rescore import RescoreSettings
    from edgetqs.allocation.targets import load_target
    from edgetqs.core.rollout import float_reference

    target = load_target(ROOT / "scripts" / "bench_target.toml")
    bits = [int(b) for b in a.bits.split(",")]
    roundings = [r for r in a.roundings.split(",") if r]
    rescore_settings = RescoreSettings(rollout_budget=a.rescore_budget, threads=a.threads)
    if a.threads:
        import torch

        torch.set_num_threads(a.threads)
    lines: list[str] = []

    def emit(s: str = "") -> None:
        print(s, flush=True)
        lines.append(s)

    results: dict[str, dict] = {}  # rounding -> {(example, bits): measured}
    plans_seen: dict[str, dict] = {}
    exs: list[Example] = []
    merged_args: list[dict] = []
    if a.merge:
        exs, results, plans_seen, merged_args = load_results([Path(p) for p in a.merge.split(",") if p])
        roundings = [r for r in roundings if r in results]
    for name in a.examples.split(",") if not a.merge else []:
        ex = load_example(name, a.k_score, a.k_held)
        exs.append(ex)
        m, sc = ex.score.model, ex.score
        t_start = time.perf_counter()
        # seconds and calls of each sweep as computed (a cached sweep keeps the figures of the run that computed it)
        scores, ladder = sweeps(ex, tuple(int(b) for b in a.ladder.split(",") if b))
        ex.costs["sweep"] = (scores.wall_seconds, scores.forward_calls)
        ex.costs["ladder"] = (ladder.wall_seconds, ladder.forward_calls) if ladder is not None else None
        print(f"{name}: sweeps {time.perf_counter() - t_start:.1f} s", flush=True)
        if a.hessian_samples > 0:
            traces, t_h, hvps, buffers = hessian_traces(name, sc, scores, a.hessian_pairs, a.hessian_samples)
        else:  # --hessian-samples 0: no Hessian baseline (n/a in the tables)
            traces, t_h, hvps, buffers = None, 0.0, 0, []
        ex.costs["hessian"] = (t_h, hvps)
        ex.buffers = buffers
        print(f"{name}: Hessian traces {t_h:.1f} s", flush=True)
        ex.ref = float_reference(ex.held.model, ex.held.spec, ex.held.contexts, ex.horizon).steps
        budgets = {b: method_plan("uniform-bits", scores, m, target, PlanOptions(runtime="ort"), bits=b).weight_bytes for b in bits}
        ex.budgets = budgets
        for rounding in roundings:
            t0 = time.perf_counter()
            if rounding == "gptq":
                from edgetqs.allocation.rounding import Rounder

                r = Rounder(m, "gptq", sc.contexts, sc.spec, ex.horizon)
                for w in m.weights:  # calibrate and round every tensor once at every bit-width (timed)
                    for b in sorted(set(bits)):
                        from edgetqs.core.quantize import Precision

                        r.integers(w.name, Precision("int", b, "channel"))
                ex.costs["gptq"] = (time.perf_counter() - t0, len(m.weights) * len(set(bits)))
            for b, cell in plans_for(ex, target, budgets, rounding, traces, buffers, rescore_settings, scores, ladder, a.random_seeds):
                results.setdefault(rounding, {})[(name, b)] = measure_cell(ex, cell, rounding, a.threads)
                plans_seen.setdefault(rounding, {})[(name, b)] = {k: v[0].precisions() for k, v in cell.items()}
                save_results(a.results, exs, results, plans_seen, vars(a) | {"out": str(a.out), "results": str(a.results)})
                print(f"{name} {rounding} {b} bits: measured and saved ({time.perf_counter() - t_start:.1f} s so far)", flush=True)

    samples_cache: dict[int, np.ndarray] = {}

    def samples(n: int) -> np.ndarray:
        if n not in samples_cache:
            samples_cache[n] = bootstrap_samples(n, a.bootstrap)
        return samples_cache[n]

    verdicts: dict[tuple[str, str], list] = {}  # (rounding, variant) -> overall-cell verdicts
    var_verdicts: dict[tuple[str, str], list] = {}
    emit("## Headline\n")
    for rounding in roundings:
        for (name, b), meas in results[rounding].items():
            errs = {k: v[0] for k, v in meas.items()}
            for v in TQS:
                if v in errs:
                    verdicts.setdefault((rounding, v), []).append(
                        ((name, b), judge(v, errs, OTHERS, plans_seen[rounding][(name, b)], samples(len(errs[v]))))
                    )
            ex = next(e for e in exs if e.name == name)
            names = ex.variables if len(ex.variables) <= 12 else ["all"]
            for j, var in enumerate(names):
                per = {k: (v[1][:, j] if var != "all" else v[0]) for k, v in meas.items()}
                for v in TQS:
                    if v in per:
                        var_verdicts.setdefault((rounding, v), []).append(
                            ((name, var, b), judge(v, per, OTHERS, plans_seen[rounding][(name, b)], samples(len(per[v]))))
                        )
    main_variant = "tqs-rescored"
    good, n, share = headline([v for _, v in verdicts[("rtn", main_variant)]]) if "rtn" in roundings else (0, 0, float("nan"))
    emit(f"headline: TQS best or tied-best in {good} of {n} informative cells ({share:.0%})")
    if "gptq" in roundings:
        better = [vv for _, vv in _paper(results["gptq"], main_variant, plans_seen["gptq"], samples)]
        nb = sum(v.outcome == "win" for v in better)
        emit(
            f"paper comparison: TQS better than uniform GPTQ at matched bytes in {nb} of {len(better)} cells ({nb / max(len(better), 1):.0%})"
        )
        emit("")
        emit(
            "(Both lines: TQS re-scored in context, the default; the headline with round-to-nearest for every method, the paper comparison "
            "with GPTQ rounding for both TQS and the uniform baseline. A cell counts for TQS only when the paired bootstrap interval of the "
            "difference excludes zero; ties are listed below.)"
        )
    emit("")
    emit(
        "rounding | variant | overall cells: win / tie / loss / saturated | best or tied-best (informative) | per-variable cells: win / tie / loss / saturated | best or tied-best"
    )
    emit("--- | --- | --- | --- | --- | ---")
    for (rounding, v), vs in verdicts.items():
        o = [x.outcome for _, x in vs]
        ov = [x.outcome for _, x in var_verdicts[(rounding, v)]]
        g, nn, sh = headline([x for _, x in vs])
        g2, n2, sh2 = headline([x for _, x in var_verdicts[(rounding, v)]])
        emit(
            f"{rounding} | {v} | {o.count('win')} / {o.count('tie')} / {o.count('loss')} / {o.count('saturated')} | {g} of {nn} ({sh:.0%}) | "
            f"{ov.count('win')} / {ov.count('tie')} / {ov.count('loss')} / {ov.count('saturated')} | {g2} of {n2} ({sh2:.0%})"
        )
    if "gptq" in roundings:
        emit("")
        emit(
            "Paper comparison (GPTQ rounding for both) per TQS variant: cells where the variant is better than uniform GPTQ at matched bytes "
            "(interval excludes zero) / tie / worse:"
        )
        emit("")
        for v in TQS:
            vs = [x for _, x in _paper(results["gptq"], v, plans_seen["gptq"], samples)]
            emit(
                f"- {v}: {sum(x.outcome == 'win' for x in vs)} better / {sum(x.outcome == 'tie' for x in vs)} tie / "
                f"{sum(x.outcome == 'loss' for x in vs)} worse of {len(vs)} ({sum(x.outcome == 'saturated' for x in vs)} saturated)"
            )
    emit("")
    emit("## Cost of the estimates (score split)\n")
    emit(
        "example | weights | groups | sweep s (model calls) | ladder s (calls) | re-scoring s and rollouts per budget (mean) | Hessian s (HVPs) | GPTQ calibration + rounding s"
    )
    emit("--- | --- | --- | --- | --- | --- | --- | ---")
    for ex in exs:
        c = ex.costs
        resc = "; ".join(
            f"{k.split()[1]}: {np.mean([x[0] for x in vals]):.1f} s, {np.mean([x[1] for x in vals]):.0f}"
            for k, vals in c.items()
            if k.startswith("rescore")
        )
        gq = f"{c['gptq'][0]:.1f}" if "gptq" in c else "-"
        lad = f"{c['ladder'][0]:.2f} ({c['ladder'][1]})" if c.get("ladder") else "not run"
        emit(
            f"{ex.name} | {ex.n_weights:,} | {ex.n_tensors} | {c['sweep'][0]:.2f} ({c['sweep'][1]}) | "
            f"{lad} | {resc} | {c['hessian'][0]:.2f} ({c['hessian'][1]}) | {gq}"
        )
    for rounding in roundings:
        emit("")
        emit(f"## Overall error at the horizon, {rounding} rounding (held-out contexts; RMS over contexts, [95% interval])\n")
        emit(
            "example | bits (budget B) | "
            + " | ".join((*TQS, *OTHERS))
            + " | "
            + " | ".join(f"{v} verdict (diff to best other [interval])" for v in TQS)
        )
        emit(" | ".join(["---"] * (2 + len(TQS) + len(OTHERS) + len(TQS))))
        for (name, b), meas in results[rounding].items():
            ex = next(e for e in exs if e.name == name)
            cells = []
            for mth in (*TQS, *OTHERS):
                if mth in meas:
                    lo, hi = interval(meas[mth][0], samples(len(meas[mth][0])))
                    cells.append(f"{cell_error(meas[mth][0]):.4g} [{lo:.3g}, {hi:.3g}]")
                else:
                    cells.append("n/a")
            vcells = []
            for v in TQS:
                x = next((vv for key, vv in verdicts.get((rounding, v), []) if key == (name, b)), None)
                vcells.append(
                    "n/a"
                    if x is None
                    else f"{x.outcome} ({x.diff:+.3g} vs {x.best_other} [{x.diff_interval[0]:+.3g}, {x.diff_interval[1]:+.3g}])"
                )
            emit(f"{name} | {b} ({ex.budgets[b]:,}) | " + " | ".join(cells) + " | " + " | ".join(vcells))
        emit("")
        emit(f"### Per variable at the horizon, {rounding} rounding (RMS over held-out contexts)\n")
        emit("example | variable | bits | " + " | ".join((*TQS, *OTHERS)) + " | " + " | ".join(f"{v}" for v in TQS))
        emit(" | ".join(["---"] * (3 + len(TQS) + len(OTHERS) + len(TQS))))
        rows = {}
        for v in TQS:
            for (name, var, b), x in var_verdicts.get((rounding, v), []):
                rows.setdefault((name, var, b), {})[v] = x
        for (name, var, b), vv in rows.items():
            meas = results[rounding][(name, b)]
            ex = next(e for e in exs if e.name == name)
            j = ex.variables.index(var) if var in ex.variables else None
            errs = [
                f"{cell_error(meas[mth][1][:, j] if j is not None else meas[mth][0]):.4g}" if mth in meas else "n/a"
                for mth in (*TQS, *OTHERS)
            ]
            emit(f"{name} | {var} | {b} | " + " | ".join(errs) + " | " + " | ".join(vv[v].outcome if v in vv else "n/a" for v in TQS))
        emit("")
        emit(f"### Cells {main_variant} loses ({rounding})\n")
        lost = [(key, x) for key, x in verdicts[(rounding, main_variant)] if x.outcome == "loss"]
        for (name, b), x in lost:
            emit(
                f"- {name} at {b} bits: {x.error:.4g} vs {x.best_other} {x.best_other_error:.4g} (difference {x.diff:+.3g}, interval "
                f"[{x.diff_interval[0]:+.3g}, {x.diff_interval[1]:+.3g}])"
            )
        if not lost:
            emit("- none")
    for ex in exs:
        if ex.buffers:
            emit(
                f"\nNote: {ex.name}: {', '.join(ex.buffers)} are buffers in the torch model (no gradient, no trace): the Hessian "
                "baseline keeps them in fp32, as HAWQ quantizes parameters only."
            )
    header = [
        "# Benchmarks: TQS allocation against what users have today\n",
        f"Produced by `python {' '.join(['scripts/bench_quality.py', *sys.argv[1:]])}` on {platform.machine()} "
        f"({os.cpu_count()} cores, {platform.processor() or platform.platform()}), Python {platform.python_version()}, "
        f"{time.strftime('%Y-%m-%d', time.gmtime())}; scoring / held-out contexts per example: "
        + ", ".join(f"{e.name} {e.k_score} / {e.k_held}" for e in exs)
        + f"; {a.bootstrap} bootstrap draws.\n",
        *(f"Merged from a run of `{' '.join(_command(x))}`.\n" for x in merged_args),
        __doc__.split("\n\n", 2)[2].strip() + "\n",
        "GPTAQ and QEP are not compared (not implemented here).\n",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text("\n".join(header + lines) + "\n")
    print(f"\nwrote {a.out}")


def _command(args: dict) -> list[str]:
    """The command line of a saved run (its options as they were parsed)."""
    keys = (
        "examples",
        "bits",
        "ladder",
        "k_score",
        "k_held",
        "roundings",
        "rescore_budget",
        "hessian_pairs",
        "hessian_samples",
        "random_seeds",
        "threads",
    )
    return ["scripts/bench_quality.py", *(f"--{k.replace('_', '-')} {args[k] if args[k] != '' else repr('')}" for k in keys if k in args)]


def _paper(results: dict, variant: str, plans: dict, samples) -> list:
    """The variant against uniform GPTQ only (the paper's comparison), per (example, budget) cell."""
    from edgetqs.allocation.compare import judge

    out = []
    for key, meas in results.items():
        errs = {k: v[0] for k, v in meas.items()}
        if variant in errs and "uniform" in errs:
            out.append((key, judge(variant, errs, ["uniform"], plans[key], samples(len(errs[variant])))))
    return out


if __name__ == "__main__":
    main()
