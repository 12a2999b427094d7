"""Latency of fp32, weight-only and integer-activation artifacts of the bundled examples, with the check's timing
protocol (first call apart, p50/p90 over the rest, peak memory), written as a markdown table.

For each example: score, plan for the Raspberry Pi's ONNX Runtime at --ratio of fp32 with int8 weights
(weight-only: float activations) and the same plan with ``activations="int8"`` (static QDQ,
`edgetqs.runtimes.ort_static`), convert both, and run `edgetqs check` on each artifact and on the fp32 model
on every --device. The result is the ratio to fp32's p50 on the same device in the same run (absolute
figures on a shared host or under qemu say little).

    PYTHONPATH=. python scripts/bench_latency.py --examples lorenz96 station --device local --out docs/latency.md
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

EXAMPLES = ("lorenz96", "station", "blizzard", "patchtst", "seaice")


def run_example(name: str, devices: list[str], k: int, horizon: int, ratio: float, work: Path) -> list[dict[str, Any]]:
    """One row per (device, artifact kind) of one example."""
    import edgetqs
    from edgetqs.allocation.plan import PlanOptions, make_plan
    from edgetqs.allocation.targets import find_target
    from edgetqs.core.inputs import resolve
    from edgetqs.core.project import load_project
    from edgetqs.examples import example_path
    from edgetqs.runtimes.convert import convert
    from edgetqs.sensitivity.scores import ProbeSettings
    from edgetqs.sensitivity.sweep import run_sweep

    project = example_path(name) / "edgetqs.toml"
    inp = resolve(None, load_project(project), k=k)
    pi = find_target("raspberrypi")
    s = run_sweep(inp.model, inp.spec, inp.contexts, ProbeSettings(horizon=min(horizon, 10)))
    arts: dict[str, Path] = {}
    fp32 = work / name / "fp32" / f"{inp.model.name}.onnx"
    fp32.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(inp.model.path, fp32)
    arts["fp32"] = fp32
    notes: dict[str, str] = {}
    for kind, acts in (("weight-only int8", "float"), ("int8 activations", "int8")):
        try:
            plan = make_plan(s, inp.model, pi, PlanOptions(runtime="ort", ratio=ratio, lowest_bits=8, activations=acts))
            r = convert(inp.model, plan, "ort", work / name / acts, inp.contexts, inp.spec)
            arts[kind] = work / name / acts / r.artifact
            if acts == "int8":
                ops = r.facts["ort_static"]["optimized_graph_ops"]
                notes[kind] = (
                    ", ".join(f"{o} x{n}" for o, n in sorted(ops.items()) if o.startswith(("QLinear", "QGemm"))) or "no integer kernel"
                )
            else:  # weight-only: MatMulNBits where the target's size rule chose it, else DequantizeLinear + the float op
                chosen = r.facts.get("weight_kernels", {})
                nb = sum(k.startswith("MatMulNBits") for k in chosen.values())
                notes[kind] = f"MatMulNBits x{nb}" if nb else f"none (DequantizeLinear x{len(chosen)})"
        except Exception as exc:  # a benchmark row says why it is missing
            notes[kind] = f"not converted: {exc}"
    rows = []
    for dev in devices:
        for kind, path in arts.items():
            t0 = time.perf_counter()
            c = edgetqs.check(path, device=dev, project=project, k=k, horizon=horizon, target="raspberrypi", fmt="ort", write=False)
            rows.append(
                {
                    "example": name,
                    "device": dev,
                    "kind": kind,
                    "p50": c.latency_ms["p50"],
                    "p90": c.latency_ms["p90"],
                    "rss": c.peak_rss_bytes,
                    "verdict": "PASS" if c.passed else "FAIL",
                    "error": max((e for e in c.rows["quantized_vs_float"].nrmse_by_lead if e is not None), default=None),
                    "note": notes.get(kind, ""),
                    "seconds": time.perf_counter() - t0,
                    "bytes": path.stat().st_size,
                }
            )
    return rows


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per example and device, p50/p90 and the ratio to fp32's p50."""
    out = [
        "| example | device | artifact | file bytes | p50 ms | p90 ms | p50 / fp32 | peak RSS MiB | check (worst NRMSE) | integer kernels |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    for r in rows:
        base = next(x for x in rows if x["example"] == r["example"] and x["device"] == r["device"] and x["kind"] == "fp32")
        rss = f"{r['rss'] / 2**20:.0f}" if r["rss"] else "?"
        err = "?" if r["error"] is None else f"{r['error']:.3f}"
        out.append(
            f"| {r['example']} | {r['device']} | {r['kind']} | {r['bytes']:,} | {r['p50']:.4f} | {r['p90']:.4f} | "
            f"{r['p50'] / base['p50']:.2f} | {rss} | {r['verdict']} ({err}) | {r['note']} |"
        )
    return "\n".join(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="+", default=list(EXAMPLES))
    ap.add_argument("--device", nargs="+", default=["local"], help="device names (devices/*.toml): local, qemu-pi4, qemu-pi5")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--ratio", type=float, default=0.3, help="weight budget as a fraction of fp32 (int8 weights: ~0.25)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetqs-bench-latency-") as tmp:
        for name in a.examples:
            got = run_example(name, a.device, a.k, a.horizon, a.ratio, Path(tmp))
            rows.extend(got)
            print(table(got), flush=True)
    text = table(rows)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
