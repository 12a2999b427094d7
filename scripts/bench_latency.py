"""Latency of fp32, weight-only and integer-activation artifacts of the bundled examples, with the check's timing
protocol (first call apart, p50/p90 over the rest, peak memory), written as a markdown table.

For each example: score, plan for the Raspberry Pi's ONNX Runtime at --ratio of fp32 with int8 weights
(--rounding rtn or gptq) and convert it three ways: weight-only (float activations); int8 activations on every op
(static QDQ, `edgetqs.runtimes.ort_static`; ``--activation-goal inf``); and int8 activations where TQS's choice
allows (`edgetqs.allocation.activations`: static, per-call or float per op, within 0.7 x the tolerance on the
host contexts). With ``--runtime tflite`` (LiteRT): weight-only, dynamic range (every op and TQS's choice), and
static activations (`edgetqs.runtimes.tflite_static`: int8 kernels on every op and where TQS's choice allows, and
full integer int16 where it allows).
Then run `edgetqs check` on each artifact and on the fp32 model on every --device. The result is the ratio to fp32's
p50 on the same device in the same run (absolute figures on a shared host or under qemu say little).

    PYTHONPATH=. python scripts/bench_latency.py --examples lorenz96 station --device local --out docs/latency.md
"""

from __future__ import annotations

import argparse
import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

EXAMPLES = ("lorenz96", "station", "blizzard", "patchtst", "seaice")


KINDS = (
    # (row label, activations, activation goal, ratio): goal None = the choice's default (0.7 x the target's
    # tolerance); ratio None = --ratio. The fp32 artifact is the canonical graph every artifact is written from
    # (shape arithmetic folded): it separates what canonicalisation saves from what the integer kernels save.
    ("fp32 artifact", "float", None, 1.0),
    ("weight-only int8", "float", None, None),
    ("int8 activations, every op", "int8", math.inf, None),
    ("int8 activations, TQS choice", "int8", None, None),
)
TFLITE_KINDS = (  # --runtime tflite: LiteRT (XNNPACK); the fp32 row stays the ONNX model on onnxruntime
    ("fp32 artifact", "float", None, 1.0),
    ("weight-only int8", "float", None, None),
    ("dynamic range, every op", "dynamic", math.inf, None),
    ("dynamic range, TQS choice", "dynamic", None, None),
    ("static int8 kernels, every op", "int8", math.inf, None),
    ("static int8 kernels, TQS choice", "int8", None, None),
    ("full integer int16, TQS choice", "int16", None, None),
)


def _kernels(r: Any) -> str:
    """What onnxruntime runs for the artifact: its integer kernels, and for a TQS choice the rung of every op."""
    from edgetqs.allocation.activations import LABELS

    choice = r.facts.get("activation_choice")
    if "ort_static" in r.facts:
        ops = r.facts["ort_static"]["optimized_graph_ops"]
        got = (
            ", ".join(f"{o} x{n}" for o, n in sorted(ops.items()) if o.startswith(("QLinear", "QGemm", "DynamicQuantize")))
            or "no integer kernel"
        )
    elif r.format == "tflite" and "float_weights" in r.facts:  # static activations (edgetqs.runtimes.tflite_static)
        n_float, n_dyn = len(r.facts["float_weights"]), len(r.facts.get("dynamic_weights", []))
        what = "static int8 kernels" if r.activations == "int8" else f"full integer {r.activations}"
        got = f"{what}, {n_dyn} dynamic range, {n_float} float kernel(s)" if r.activations != "float" else "weight-only (float kernels)"
        if acts := r.facts.get("integer_activations"):
            got += f", {len(acts)} activation(s) int8 after their kernel"
    elif r.format == "tflite":
        dyn = r.facts.get("dynamic_weights", [])
        got = f"dynamic range x{len(dyn)}" if dyn else "weight-only (float kernels)"
        if r.facts.get("centred"):
            got += f" ({len(r.facts['centred'])} with its window centred)"
    elif r.activations == "float" and choice is None:  # weight-only: MatMulNBits where the size rule chose it
        chosen = r.facts.get("weight_kernels", {})
        nb = sum(k.startswith("MatMulNBits") for k in chosen.values())
        got = f"MatMulNBits x{nb}" if nb else (f"none (DequantizeLinear x{len(chosen)})" if chosen else "fp32 weights")
    else:
        got = "none (every activation float)"
    if choice is not None and math.isfinite(choice["goal"]):
        modes = choice["modes"]
        got += "; choice: " + ", ".join(f"{sum(m == k for m in modes.values())} {k}" for k in LABELS if k in modes.values())
        if choice.get("weights_alone") is not None and choice["weights_alone"] > choice["goal"]:
            got += f" (weights alone {choice['weights_alone']:.3f} > goal {choice['goal']:.3f})"
    return got


def run_example(
    name: str,
    devices: list[str],
    k: int,
    horizon: int,
    ratio: float,
    work: Path,
    repeat: int = 1,
    rounding: str = "rtn",
    calls: int = 0,
    runtime: str = "ort",
    processes: int = 1,
) -> list[dict[str, Any]]:
    """One row per (device, artifact kind) of one example; with ``repeat`` > 1 every artifact is checked that many
    times in turn, p50/p90 are the medians of the runs' and the ratio is the median of the per-run ratios."""
    import edgetqs
    from edgetqs.core.project import load_project
    from edgetqs.examples import example_path

    project = example_path(name) / "edgetqs.toml"
    model = project.parent / str(load_project(project).model)
    s = edgetqs.score(project=project, k=k, horizon=min(horizon, 10))
    arts: dict[str, Path] = {}
    fp32 = work / name / "fp32" / model.name
    fp32.parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(model, fp32)
    arts["fp32"] = fp32
    notes: dict[str, str] = {}
    plans: dict[str, Any] = {}
    for kind, acts, goal, kind_ratio in KINDS if runtime == "ort" else TFLITE_KINDS:
        try:
            key = (acts, kind_ratio or ratio)
            if key not in plans:
                plans[key] = edgetqs.plan(
                    s,
                    target="raspberrypi",
                    project=project,
                    ratio=kind_ratio or ratio,
                    runtime=runtime,
                    lowest=8,
                    activations=acts,
                    rounding=rounding if kind_ratio is None else "rtn",
                    k=k if kind_ratio is None and rounding != "rtn" else None,
                )
            out = work / name / kind.replace(" ", "-").replace(",", "")
            r = edgetqs.convert(None, plans[key], runtime, out, project=project, k=k, activation_goal=goal)
            arts[kind] = out / r.artifact
            notes[kind] = _kernels(r)
            advice = next((m for n in r.notes if "flattened window" in n and (m := re.search(r"--budget (\d+)", n))), None)
            if advice is not None and goal is None:  # a window could be centred with a few more bytes: the row a user gets
                wider = f"{kind}, budget {int(advice.group(1)):,} B (room to centre a window)"
                plan = edgetqs.plan(
                    s, target="raspberrypi", project=project, budget=int(advice.group(1)), runtime=runtime, lowest=8,
                    activations=acts, rounding=rounding, k=k if rounding != "rtn" else None,
                )  # fmt: skip
                out = work / name / (kind.replace(" ", "-").replace(",", "") + "-budget")
                r = edgetqs.convert(None, plan, runtime, out, project=project, k=k)
                arts[wider] = out / r.artifact
                notes[wider] = _kernels(r)
        except Exception as exc:  # a benchmark row says why it is missing
            notes[kind] = f"not converted: {exc}"
    rows = []
    for dev in devices if repeat else []:  # --repeat 0: the model call alone (--calls)
        runs: dict[str, list[Any]] = {kind: [] for kind in arts}
        for _ in range(repeat):  # the artifacts take turns: drift of a shared host spreads over all of them
            for kind, path in arts.items():
                t0 = time.perf_counter()
                fmt = "ort" if path.suffix == ".onnx" else runtime
                c = edgetqs.check(path, device=dev, project=project, k=k, horizon=horizon, target="raspberrypi", fmt=fmt, write=False)
                runs[kind].append((c, time.perf_counter() - t0))
        for kind, path in arts.items():
            c = runs[kind][-1][0]
            ratios = [r[0].latency_ms["p50"] / b[0].latency_ms["p50"] for r, b in zip(runs[kind], runs["fp32"])]
            rows.append(
                {
                    "example": name,
                    "device": dev,
                    "kind": kind,
                    "p50": float(np.median([r[0].latency_ms["p50"] for r in runs[kind]])),
                    "p90": float(np.median([r[0].latency_ms["p90"] for r in runs[kind]])),
                    "ratio": float(np.median(ratios)),
                    "ratio_range": (min(ratios), max(ratios)),
                    "rss": c.peak_rss_bytes,
                    "verdict": "PASS" if c.passed else "FAIL",
                    "error": max((e for e in c.rows["quantized_vs_float"].nrmse_by_lead if e is not None), default=None),
                    "note": notes.get(kind, ""),
                    "seconds": sum(r[1] for r in runs[kind]),
                    "bytes": path.stat().st_size,
                }
            )
    if calls:
        rows.append({"calls": call_timing(name, arts, devices, calls, work, processes, notes)})
    return rows


def median_interval(ratios: list[float]) -> str:
    """95% bootstrap interval of the median over processes ("-" under 3: a process's speed drifts under qemu, and
    the interval is what tells a ratio from the 0.6 goal)."""
    from edgetqs.allocation.compare import bootstrap_samples

    if len(ratios) < 3:
        return "-"
    boot = np.median(np.asarray(ratios, np.float64)[bootstrap_samples(len(ratios))], axis=1)
    return f"{np.percentile(boot, 2.5):.2f}-{np.percentile(boot, 97.5):.2f}"


def call_timing(
    name: str, arts: dict[str, Path], devices: list[str], calls: int, work: Path, processes: int = 1, notes: dict[str, str] | None = None
) -> str:
    """The model call alone, without the check's driver: every artifact in one process per device, kinds interleaved
    round by round (`scripts/bench_ort_kernels.py time`), weight-only files loaded as the check loads them (weights
    dequantized once) and also as a plain session would (DequantizeLinear on every call)."""
    import json
    import subprocess
    import sys

    from edgetqs.core.model import load_model
    from edgetqs.runtimes.ort import fold_weights
    from edgetqs.validation.devices import GUEST_PYTHON, find_device

    folder = work / name / "calls"
    folder.mkdir(parents=True, exist_ok=True)
    m = load_model(arts["fp32"])
    shapes = {i.name: [d if isinstance(d, int) else 1 for d in i.shape] for i in m.inputs}
    index = []
    for i, (kind, path) in enumerate(arts.items()):
        # a kind is a label ("l2/l3 dynamic", "every op, int8"): the file name keeps its safe characters, numbered
        file = f"{i:02d}-{re.sub(r'[^A-Za-z0-9._-]+', '-', kind)}{'.tflite' if path.suffix == '.tflite' else '.onnx'}"
        shutil.copy(path, folder / file)
        entry = {"group": name, "kind": kind, "file": file, "inputs": shapes}
        if kind == "weight-only int8" and path.suffix != ".tflite":
            index.append({**entry, "kind": "weight-only int8, DequantizeLinear per call"})
        if path.suffix != ".tflite" and fold_weights(path):  # loaded as the check loads it: weights dequantized once
            entry["fold"] = True
        index.append(entry)
    (folder / "index.json").write_text(json.dumps(index))
    script = Path(__file__).with_name("bench_ort_kernels.py")
    out = []
    for dev in devices:
        if dev == "local":
            cmd = [sys.executable, str(script), "time", str(folder), "--calls", str(calls)]
        else:
            d = find_device(dev)
            root = d.sysroot_path()  # type: ignore[attr-defined]
            cmd = ["qemu-aarch64-static", "-cpu", d.cpu, "-L", str(root), str(root / GUEST_PYTHON), str(script), "time", str(folder)]  # type: ignore[attr-defined]
            cmd += ["--calls", str(calls)]
        ratios: dict[str, list[float]] = {}
        for _ in range(processes):  # an emulator's speed drifts between processes too: several, then the median
            got = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
            if got.returncode != 0:
                out.append(f"{name} on {dev}: failed: {got.stderr.strip()[-300:]}")
                break
            for ln in got.stdout.splitlines():
                cells = [c.strip() for c in ln.strip("|").split("|")]
                if len(cells) == 5 and cells[0] == name:
                    try:
                        ratios.setdefault(cells[1], []).append(float(cells[3]))
                    except ValueError:
                        continue
        rows = [
            f"| {k} | {np.median(v):.2f} | {median_interval(v)} | {min(v):.2f}-{max(v):.2f} | {' '.join(f'{x:.2f}' for x in v)} | "
            f"{(notes or {}).get(k, '')} |"
            for k, v in ratios.items()
        ]
        head = f"{name} on {dev}: the model call alone, p50 / fp32 model's p50, {processes} process(es) x {calls} calls interleaved"
        out.append(
            head
            + "\n\n| artifact | median | 95% interval of the median | range | per process | what runs |\n|---|---:|---|---|---|---|\n"
            + "\n".join(rows)
        )
    return "\n\n".join(out)


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: per example and device, p50/p90 and the ratio to fp32's p50."""
    out = [
        "| example | device | artifact | file bytes | p50 ms | p90 ms | p50 / fp32 (range) | peak RSS MiB | check (worst NRMSE) | integer kernels |",
        "|---|---|---|---:|---:|---:|---:|---:|---|---|",
    ]
    calls = [r["calls"] for r in rows if "calls" in r]
    for r in rows:
        if "calls" in r:
            continue
        lo, hi = r["ratio_range"]
        span = f" ({lo:.2f}-{hi:.2f})" if hi > lo else ""
        rss = f"{r['rss'] / 2**20:.0f}" if r["rss"] else "?"
        err = "?" if r["error"] is None else f"{r['error']:.3f}"
        out.append(
            f"| {r['example']} | {r['device']} | {r['kind']} | {r['bytes']:,} | {r['p50']:.4f} | {r['p90']:.4f} | "
            f"{r['ratio']:.2f}{span} | {rss} | {r['verdict']} ({err}) | {r['note']} |"
        )
    text = "\n".join(out)
    if calls:
        text += "\n\nThe model call alone (interleaved rounds, one process per device):\n\n" + "\n\n".join(calls)
    return text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", nargs="+", default=list(EXAMPLES))
    ap.add_argument("--device", nargs="+", default=["local"], help="device names (devices/*.toml): local, qemu-pi4, qemu-pi5")
    ap.add_argument("--k", type=int, default=4)
    ap.add_argument("--horizon", type=int, default=20)
    ap.add_argument("--ratio", type=float, default=0.3, help="weight budget as a fraction of fp32 (int8 weights: ~0.25)")
    ap.add_argument("--repeat", type=int, default=1, help="check every artifact this many times, in turn (median ratio, range)")
    ap.add_argument("--rounding", default="rtn", help="the plans' rounding: rtn or gptq (calibrated on the project's contexts)")
    ap.add_argument("--calls", type=int, default=0, help="also time the model call alone, this many calls per artifact and device")
    ap.add_argument("--runtime", default="ort", choices=("ort", "tflite"), help="ort (onnxruntime) or tflite (LiteRT, XNNPACK)")
    ap.add_argument("--processes", type=int, default=3, help="--calls: time in this many fresh processes per device (median)")
    ap.add_argument("--out", type=Path, default=None, help="write the markdown table here")
    a = ap.parse_args()
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="edgetqs-bench-latency-") as tmp:
        for name in a.examples:
            got = run_example(name, a.device, a.k, a.horizon, a.ratio, Path(tmp), a.repeat, a.rounding, a.calls, a.runtime, a.processes)
            rows.extend(got)
            print(table(got), flush=True)
    text = table(rows)
    if a.out:
        a.out.write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
