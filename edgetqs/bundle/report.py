"""report.html: one self-contained page (figures embedded as PNG data URIs) a forecaster can read.

Sections: verdict in words; model and target; memory against the budgets; error vs lead time per
variable on the device, and the three comparisons users know; latency; the sensitivity ranking and
gamma curves; the bit plan per tensor; the Pareto front with the chosen point; notes and versions.
`screenshot` renders it with headless Chromium (Debian's ``chromium``) to check that it displays.
"""

from __future__ import annotations

import base64
import html
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from ..core.files import HTML_GENERATOR, write_text
from ..errors import EdgetqsError


def _img(path: Path, alt: str) -> str:
    data = base64.b64encode(path.read_bytes()).decode()
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{data}">'


def _esc(x: Any) -> str:
    return html.escape(str(x))


def _fmt(v: float | None, spec: str = ".3g") -> str:
    return "NaN/Inf" if v is None else format(v, spec)


CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:24px auto;padding:0 16px;color:#1b2631}
h1{font-size:1.6em;margin-bottom:4px} h2{font-size:1.2em;border-bottom:1px solid #d5dde6;padding-bottom:4px;margin-top:28px}
.verdict{font-size:1.15em;padding:12px 16px;border-radius:6px;margin:12px 0}
.pass{background:#e3f4e6;border:1px solid #5aa469} .fail{background:#fbe5e5;border:1px solid #c0392b}
table{border-collapse:collapse;font-size:.86em;margin:8px 0} td,th{border:1px solid #d5dde6;padding:3px 8px;text-align:left}
th{background:#f2f5f8} td.num{text-align:right;font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #e5e9ee;margin:6px 0} .muted{color:#5d6d7e;font-size:.85em}
.grid{display:grid;grid-template-columns:max-content auto;gap:2px 16px;font-size:.92em}
"""


def write_report(path: Path, *, model: Any, target: Any, scores: Any, plan: Any, conv: Any, chk: Any, figures: Path, cached: bool) -> Path:
    """Write report.html: the verdict in words, memory, errors by lead, latency, sensitivity, the bit plan."""
    from .plots import plot_check, plot_memory, plot_pareto, plot_scores

    plot_check(chk, figures / "check.png")

    plot_scores(scores, figures / "scores.png")
    plot_memory(conv, chk, target, figures / "memory.png")
    if plan.pareto:
        plot_pareto(plan, figures / "pareto.png")
    dev = chk.device
    q = chk.rows["quantized_vs_float"]
    words = chk.verdict.split(": ", 1)[1] if chk.verdict.startswith(("PASS: ", "FAIL: ")) else chk.verdict
    if chk.emulated:
        words += ". The check ran on an emulated ARM CPU (qemu): results are those of the ARM build of the runtime; the latency is not a board's."
    elif dev.get("host"):
        words += ". The check ran on this computer, not on the target device."
    lat = chk.latency_ms
    picks = sorted({1, max(1, chk.leads // 4), max(1, chk.leads // 2), chk.leads})
    metric_rows = []
    for key in ("quantized_vs_float", "quantized_vs_truth", "float_vs_truth"):
        if key in chk.rows:
            m = chk.rows[key]
            cells = "".join(f'<td class="num">{_fmt(m.nrmse_by_lead[p - 1])}</td>' for p in picks)
            metric_rows.append(
                f"<tr><td>{key.replace('_', ' ')}</td>{cells}<td class=num>{m.divergence_lead or '-'}</td>"
                f"<td class=num>{m.first_nonfinite_lead or '-'}</td></tr>"
            )
    per_var = []
    for j, v in enumerate(chk.variables[:24]):
        per_var.append(
            f"<tr><td>{_esc(v)}</td>"
            + "".join(f'<td class="num">{_fmt(q.nrmse[p - 1][j])}</td>' for p in picks)
            + (f'<td class="num">{_fmt(q.bias[-1][j])}</td>')
        )
    gam = {g.name: g for g in scores.groups}
    tens = []
    for t in sorted(plan.tensors, key=lambda t: -t.error_share):
        g = gam.get(t.group)
        tens.append(
            f"<tr><td>{_esc(t.display)}</td><td>{_esc(t.op)}</td><td class=num>{t.n_params:,}</td><td>{_esc(t.precision.name)}</td>"
            f"<td class=num>{t.bytes:,}</td><td class=num>{t.fp32_bytes:,}</td>"
            f"<td class=num>{_fmt(g.gamma if g else None)}</td><td class=num>{t.error_share:.1%}</td><td>{_esc(t.rule)}</td></tr>"
        )
    ram = (
        f"tensor arena {conv.arena_bytes:,} B (smallest that runs, found by bisection; the interpreter reports {conv.arena_bytes_reported:,} B)"
        if conv.arena_bytes
        else f"peak memory of the check process {(chk.peak_rss_bytes or 0):,} B (Python, numpy and the runtime included)"
    )
    body = f"""<!doctype html><html lang="en"><head><meta charset="utf-8">{HTML_GENERATOR}<title>edgetqs: {_esc(model.name)} on {_esc(target.name)}</title>
<style>{CSS}</style></head><body>
<h1>{_esc(model.name)} on {_esc(target.name)}</h1>
<div class="muted">edgetqs bundle report: score &rarr; plan &rarr; convert &rarr; check</div>
<div class="verdict {"pass" if chk.passed else "fail"}"><b>{"PASS" if chk.passed else "FAIL"}</b>: {_esc(words)}</div>
<h2>Model and target</h2>
<div class="grid">
<div>model</div><div>{_esc(model.name)} ({sum(t.n_params for t in plan.tensors):,} weights in {len(plan.tensors)} tensors), sha256 {model.sha256[:16]}&hellip;</div>
<div>rollout</div><div>{_esc(scores.spec.mode)} mode, {chk.horizon} steps ({chk.leads} lead times), {chk.contexts.k} contexts from {_esc(chk.contexts.source)}</div>
<div>target</div><div>{_esc(target.name)}: {_esc(target.description)} ({_esc(target.arch)})</div>
<div>artifact</div><div>{_esc(conv.artifact)} ({_esc(conv.format)}), {conv.weight_bytes:,} weight bytes ({conv.weight_bytes / conv.fp32_weight_bytes:.1%} of fp32), {conv.file_bytes:,} file bytes</div>
<div>checked on</div><div>{_esc(dev.get("name"))}: {_esc(dev.get("description") or dev.get("kind"))}; {_esc(chk.runtime.get("name"))} {_esc(chk.runtime.get("version"))} on {_esc(chk.machine)} ({_esc(chk.cpu)})</div>
<div>tolerance</div><div>normalised RMSE vs the float trajectory &le; {chk.tolerance:g} at every lead</div>
<div>scores</div><div>{"reused from the cache (same model, contexts and probe settings)" if cached else "computed for this build"}</div>
</div>
<h2>Memory</h2>{_img(figures / "memory.png", "memory bars")}
<p>Weights: {conv.weight_bytes:,} B of a {target.weight_budget_bytes:,} B budget (headroom {target.weight_budget_bytes - conv.weight_bytes:,} B). RAM: {ram}, budget {target.ram_budget_bytes:,} B.</p>
<h2>Error against lead time, on the device</h2>{_img(figures / "check.png", "error vs lead time")}
<table><tr><th>normalised RMSE</th>{"".join(f"<th>lead {p}</th>" for p in picks)}<th>diverges at</th><th>NaN/Inf at</th></tr>{"".join(metric_rows)}</table>
<p class="muted">Each variable's RMSE is divided by its spread in the record. "Diverges at": first lead where the RMSE over all variables exceeds the tolerance.</p>
<table><tr><th>variable (quantized vs float)</th>{"".join(f"<th>lead {p}</th>" for p in picks)}<th>bias at lead {chk.leads}</th></tr>{"".join(per_var)}</table>
<h2>Latency</h2>
<table><tr><th>start-up</th><th>first inference</th><th>steps timed</th><th>min</th><th>p50</th><th>p90</th><th>p99</th><th>peak memory</th></tr>
<tr><td class=num>{_fmt(chk.latency_ms_init, ".1f")} ms</td><td class=num>{_fmt(chk.latency_ms_first, ".3g")} ms</td><td class=num>{lat.get("n", 0)}</td>
<td class=num>{_fmt(lat.get("min"))} ms</td><td class=num>{_fmt(lat.get("p50"))} ms</td><td class=num>{_fmt(lat.get("p90"))} ms</td><td class=num>{_fmt(lat.get("p99"))} ms</td>
<td class=num>{(chk.peak_rss_bytes or 0) / 2**20:.1f} MiB</td></tr></table>
<p class="muted">One forecast step at batch {chk.batch}, the first call and the runtime's start-up apart.{" Emulated under qemu: not the speed of a real board." if chk.emulated else ""}</p>
<h2>Sensitivity (TQS)</h2>{_img(figures / "scores.png", "TQS ranking and gamma curves")}
<p class="muted">gamma: the finite-time growth rate of a weight perturbation along the rollout ({_esc(scores.settings.probe)} probe, T={scores.horizon}); the dashed line is the model's own exponent (initial state perturbed).</p>
<h2>Bit plan</h2>
<p>{plan.allocator} allocation for {_esc(plan.runtime)}, objective {_esc(plan.objective)}: {plan.weight_bytes:,} of {plan.budget_bytes:,} B, predicted error {_fmt(plan.predicted_error)} at T={plan.horizon}.</p>
<table><tr><th>tensor</th><th>op</th><th>params</th><th>precision</th><th>bytes</th><th>fp32 bytes</th><th>gamma</th><th>share of predicted error</th><th>rule</th></tr>{"".join(tens)}</table>
{_constants(plan)}
{_activations(conv)}
{("<h2>Size against predicted error</h2>" + _img(figures / "pareto.png", "Pareto front") + '<p class="muted">Plans at budgets from the smallest feasible to fp32; the star is this bundle.</p>') if plan.pareto else ""}
<h2>Notes</h2><ul>{"".join(f"<li>{_esc(n)}</li>" for n in (list(conv.notes) + list(chk.notes)))}</ul>
<p class="muted">Versions: {_esc(", ".join(f"{k} {v}" for k, v in conv.versions.items()))}</p>
</body></html>"""
    return write_text(path, body, policy="replace_result", kind="report")


def _activations(conv: Any) -> str:
    """The activation choice (`edgetqs.allocation.activations`): each group's TQS, its error alone and its rung."""
    c = (conv.facts or {}).get("activation_choice")
    if not c:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(s['op'])}</td><td>{_esc(s['op_type'])}</td><td>{_esc(s['mode'])}</td><td class=num>{s['eps']:.4f}</td>"
        f"<td class=num>{_fmt(s['gamma'])}</td><td class=num>{_fmt(s['error'])}</td><td>{_esc(c['modes'].get(s['op'], ''))}</td></tr>"
        for s in c["scores"]
    )
    trials = "".join(
        f"<li>{_esc(', '.join(t['wider']) or 'every op at its narrowest rung')}: {_fmt(t['error'])} "
        f"({'within' if t['passed'] else 'over'} the goal)</li>"
        for t in c["trials"]
    )
    return f"""<h2>Activations</h2>
<p>Which ops run integer activations, chosen by TQS in context: goal {c["goal"]:.3g} (worst normalised RMSE over {c["horizon"]} steps),
chosen artifact {_fmt(c["error"])}, weights alone {"not measured" if c.get("weights_alone") is None else _fmt(c["weights_alone"])};
{c["rollouts"]} rollouts, {c["seconds"]:.1f} s.</p>
<table><tr><th>op</th><th>type</th><th>quantization scored</th><th>eps</th><th>gamma</th><th>error, this group alone</th><th>chosen</th></tr>{rows}</table>
<ul>{trials}</ul>"""


def _constants(plan: Any) -> str:
    """The float initializers that are not weights, kept exact, with the reason."""
    if not plan.excluded:
        return ""
    rows = "".join(
        f"<tr><td>{_esc(c.label if c.label != c.name else '')} [{_esc(c.name)}]</td><td>{_esc('x'.join(map(str, c.shape)))}</td>"
        f"<td class=num>{c.n_params:,}</td><td>{_esc(c.reason)}</td></tr>"
        for c in plan.excluded
    )
    return (
        "<h2>Constants kept exact</h2><p>Float initializers that are not weights: never scored, never quantized, stored exactly "
        f"(counted in the {plan.fixed_bytes:,} B of non-weight initializers the weight bytes include).</p>"
        f"<table><tr><th>tensor</th><th>shape</th><th>params</th><th>why</th></tr>{rows}</table>"
    )


class ScreenshotError(EdgetqsError):
    """Headless Chromium is missing or could not render the page."""


def screenshot(page: Path, png: Path, width: int = 1280, height: int = 4200, timeout: float = 120) -> Path:
    """Render ``page`` with headless Chromium and save a PNG."""
    exe = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
    if exe is None:
        raise ScreenshotError("no chromium found: apt-get install chromium (scripts/setup.sh does)")
    with tempfile.TemporaryDirectory() as profile:
        cmd = [
            exe,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={png.resolve()}",
            page.resolve().as_uri(),
        ]
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0 or not png.exists():
        raise ScreenshotError(f"chromium could not render {page}: {r.stderr.strip()[-300:]}")
    return png
