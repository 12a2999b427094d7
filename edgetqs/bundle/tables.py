"""Rich tables rendered from result objects."""

from __future__ import annotations

from typing import Any

from rich.markup import escape
from rich.table import Table

from ..allocation.plan import kib
from ..sensitivity.scores import Scores


def _e(x: Any) -> str:
    """User text (names of groups, tensors, variables, files) is never rich markup."""
    return escape(str(x))


def scores_table(scores: Scores, top: int = 20) -> Table:
    ranked = scores.ranked()
    shown = ranked if top <= 0 else ranked[:top]
    st = scores.state_exponent.exponent
    t = Table(
        title=f"TQS of {_e(scores.model)} ({scores.settings.probe} probe, {scores.settings.granularity} groups, T={scores.horizon}, K={scores.contexts.k})",
        caption=(f"model's own state exponent {st:+.3f}/step" if st is not None else "state exponent undefined")
        + (f"; showing {len(shown)} of {len(ranked)} groups" if len(shown) < len(ranked) else ""),
    )
    for col in ("rank", "group", "params", "gamma", "gain A", ""):
        t.add_column(col, justify="left" if col in ("group", "") else "right")
    for i, g in enumerate(shown, 1):
        if g.diverged_step is not None:
            flag, gamma, gain = f"[red]non-finite at step {g.diverged_step}[/]", "inf", "inf"
        elif g.dead:
            flag, gamma, gain = "[dim]dead (no effect on the rollout)[/]", "-", "0"
        else:
            excess = g.gamma - st if (st is not None and g.gamma is not None) else None
            flag = "" if excess is None else f"{excess:+.3f} vs state"
            gamma, gain = f"{g.gamma:+.3f}", f"{g.gain:.3g}"
        t.add_row(str(i), _e(g.display), f"{g.n_params:,}", gamma, gain, flag)
    return t


def constants_table(excluded: Any) -> Table:
    """Float initializers that are not weights (``excluded`` of scores.json / plan.json): kept exact, with the reason."""
    t = Table(title="constants: not scored, not quantized, stored exactly", caption="--include NAME (or re:REGEX) makes one a weight")
    for col in ("tensor", "shape", "params", "reason"):
        t.add_column(col, justify="right" if col == "params" else "left")
    for c in excluded:
        name = f"{c.label} [{c.name}]" if c.label and c.label != c.name else c.name
        t.add_row(_e(name), "x".join(map(str, c.shape)), f"{c.n_params:,}", _e(c.reason))
    return t


def plan_table(plan: Any, measured: Any = None) -> Table:
    """Per tensor: precision, bytes, residual, share of the predicted error, the rule that decided it."""
    pe = "unbounded" if plan.predicted_error is None else f"{plan.predicted_error:.4g}"
    cap = (
        f"weights {plan.weight_bytes:,} B ({kib(plan.weight_bytes)}) of budget {plan.budget_bytes:,} B ({kib(plan.budget_bytes)}), "
        f"headroom {plan.headroom_bytes:,} B; fp32 {plan.fp32_bytes:,} B ({plan.weight_bytes / plan.fp32_bytes:.1%}); "
        f"predicted error at T={plan.horizon}: {pe}"
    )
    if measured is not None:
        cap += f"; measured (simulated quantization): {measured.error_at_horizon:.4g}"
    t = Table(
        title=f"plan for {_e(plan.model)} on {_e(plan.target)} ({plan.runtime}, {plan.allocator}, objective {plan.objective}, "
        f"{plan.rounding} rounding)",
        caption=cap,
    )
    for col in ("tensor", "op", "params", "precision", "bytes", "residual", "error share", "rule"):
        t.add_column(col, justify="right" if col in ("params", "bytes", "residual", "error share") else "left")
    for x in plan.tensors:
        t.add_row(
            _e(x.display),
            _e(x.op),
            f"{x.n_params:,}",
            x.precision.name,
            f"{x.bytes:,}",
            f"{x.residual:.2e}",
            f"{x.error_share:.1%}",
            _e(x.rule),
        )
    return t


def pareto_table(plan: Any) -> Table:
    """The plan's Pareto front (other budgets from the same scores); the chosen plan marked."""
    t = Table(title="Pareto front (one score file, several budgets)")
    for col in ("budget B", "weights B", "vs fp32", "bits/weight", "predicted E", "measured E", ""):
        t.add_column(col, justify="right")
    for p in plan.pareto:
        pe = "unbounded" if p.predicted_error is None else f"{p.predicted_error:.4g}"
        t.add_row(
            f"{p.budget_bytes:,}",
            f"{p.weight_bytes:,}",
            f"{p.weight_bytes / plan.fp32_bytes:.1%}",
            f"{p.bits_per_weight:.2f}",
            pe,
            "-" if p.measured_error is None else f"{p.measured_error:.4g}",
            "this plan" if p.chosen else "",
        )
    return t


def evaluation_table(plan: Any) -> Table:
    """Measured (simulated quantization) normalised RMSE per lead time and per variable at the horizon."""
    ev = plan.evaluation
    leads = ev.nrmse_by_lead
    picks = sorted({1, max(1, len(leads) // 4), max(1, len(leads) // 2), len(leads)})
    t = Table(
        title=f"quantized vs float, measured on {ev.contexts.k} contexts (normalised RMSE)",
        caption=None if ev.first_nonfinite_step is None else f"rollout became non-finite at step {ev.first_nonfinite_step}",
    )
    t.add_column("lead step", justify="right")
    t.add_column("all variables", justify="right")
    for lead in picks:
        v = leads[lead - 1]
        t.add_row(str(lead), "non-finite" if v is None else f"{v:.4g}")
    per = ev.nrmse_by_variable_at_horizon
    if len(per) <= 12:
        for name, v in per.items():
            t.add_row(f"{_e(name)} @ {len(leads)}", "non-finite" if v is None else f"{v:.4g}")
    else:
        worst = sorted(per.items(), key=lambda kv: -(kv[1] if kv[1] is not None else float("inf")))[:5]
        for name, v in worst:
            t.add_row(f"{_e(name)} @ {len(leads)} (worst 5 of {len(per)})", "non-finite" if v is None else f"{v:.4g}")
    return t


def convert_table(r: Any) -> Table:
    """Read-back per tensor, then sizes and host-runtime errors."""

    def f(v: float | None) -> str:
        return "non-finite" if v is None else f"{v:.3g}"

    cap = (
        f"weights {r.weight_bytes:,} B ({kib(r.weight_bytes)}) vs fp32 {r.fp32_weight_bytes:,} B ({r.weight_bytes / r.fp32_weight_bytes:.1%}), "
        f"budget {r.budget_bytes:,} B; file {r.file_bytes:,} B vs fp32 file {r.fp32_file_bytes:,} B. "
        f"Host rollout vs float: step 1 {f(r.one_step_error)}, step {r.horizon} {f(r.error_by_lead[-1])}; "
        f"simulated quantization at step {r.horizon}: {f(r.simulated_error_by_lead[-1])}; artifact vs simulated: {f(r.artifact_vs_simulated)}"
    )
    if r.arena_bytes is not None:
        ram = "" if r.ram_budget_bytes is None else f" of a {r.ram_budget_bytes:,} B RAM budget"
        cap += (
            f". TFLite-Micro: {r.activations} activations; tensor arena {r.arena_bytes:,} B measured minimum{ram}, "
            f"{'?' if r.arena_bytes_reported is None else f'{r.arena_bytes_reported:,}'} B reported by the interpreter"
        )
    t = Table(title=f"{_e(r.artifact)} ({r.format}, plan for {_e(r.target)}/{r.runtime})", caption=cap)
    for col in ("tensor", "planned", "stored", "bytes", "match"):
        t.add_column(col)
    for c in r.tensors:
        t.add_row(_e(c.name), c.planned, _e(c.found), f"{c.bytes:,}", "yes" if c.match else "[red]NO[/]")
    return t


def check_table(r: Any) -> Table:
    """The three rows users know, at a few leads, then latency and memory."""
    rows = r.rows
    n = r.leads
    picks = sorted({1, max(1, n // 4), max(1, n // 2), n})

    def f(v: float | None) -> str:
        return "NaN/Inf" if v is None else f"{v:.3g}"

    lat = r.latency_ms
    cap = (
        f"latency per step (batch {r.batch}, first excluded): p50 {lat.get('p50', float('nan')):.3g} ms, p90 {lat.get('p90', float('nan')):.3g} ms, "
        f"p99 {lat.get('p99', float('nan')):.3g} ms over {int(lat.get('n', 0))} steps; first {r.latency_ms_first or float('nan'):.3g} ms; "
        f"start-up {r.latency_ms_init or float('nan'):.3g} ms; peak memory {(r.peak_rss_bytes or 0) / 2**20:.1f} MiB; "
        f"{_e(r.runtime.get('name', '?'))} {_e(r.runtime.get('version', ''))} on {_e(r.machine)} ({_e(r.cpu)})"
    )
    if r.emulated:
        cap += ". EMULATED: qemu latency is not board latency"
    t = Table(title=f"{_e(r.artifact)} on {_e(r.device['name'])}: normalised RMSE by lead (tolerance {r.tolerance:g})", caption=cap)
    t.add_column("comparison")
    for p in picks:
        t.add_column(f"lead {p}", justify="right")
    t.add_column("diverges at", justify="right")
    t.add_column("NaN/Inf at", justify="right")
    for key in ("quantized_vs_float", "quantized_vs_truth", "float_vs_truth"):
        if key in rows:
            m = rows[key]
            t.add_row(
                key.replace("_", " "),
                *[f(m.nrmse_by_lead[p - 1]) for p in picks],
                str(m.divergence_lead or "-"),
                str(m.first_nonfinite_lead or "-"),
            )
    return t
