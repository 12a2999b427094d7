"""Plots rendered from result objects (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..sensitivity.scores import Scores


def pyplot() -> Any:
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a field station or in CI
    import matplotlib.pyplot as plt

    return plt


def save(fig: Any, path: str | Path, policy: str = "replace_result") -> Path:
    """Write a figure as PNG through the safe writer (a previous edgetqs figure is replaced, anything else
    refused), and free it."""
    from ..core.files import save_figure

    fig.tight_layout()
    try:
        return save_figure(fig, path, policy=policy)
    finally:
        pyplot().close(fig)


def plot_scores(scores: Scores, path: str | Path, top: int = 12) -> Path:
    """Two panels: gamma per group (ranked, dead and diverged marked) and gamma(t) curves of the
    most sensitive groups beside the model's own state exponent."""
    plt = pyplot()
    ranked = scores.ranked()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4.0, 0.22 * len(ranked) + 1.5)))
    names = [g.display if len(g.display) <= 60 else g.display[:57] + "..." for g in ranked][::-1]
    finite = [g.gamma for g in ranked if g.gamma is not None]
    lo = min(finite) if finite else 0.0
    hi = max(finite) if finite else 1.0
    vals, colors = [], []
    for g in ranked[::-1]:
        if g.diverged_step is not None:
            vals.append(hi + 0.1 * (abs(hi) + 1))
            colors.append("#b2182b")
        elif g.gamma is None:
            vals.append(lo - 0.1 * (abs(lo) + 1))
            colors.append("#999999")
        else:
            vals.append(g.gamma)
            colors.append("#2166ac")
    ax1.barh(range(len(names)), vals, color=colors)
    ax1.set_yticks(range(len(names)), names, fontsize=7)
    ax1.set_xlabel("gamma (per step, ln units)")
    ax1.set_title(f"TQS per group ({scores.settings.probe} probe, T={scores.horizon}); red: diverged, grey: dead", fontsize=9)
    if scores.state_exponent.exponent is not None:
        ax1.axvline(scores.state_exponent.exponent, color="k", ls="--", lw=1, label="model's own exponent")
        ax1.legend(fontsize=7, loc="lower right")
    t = list(range(1, scores.horizon + 1))
    colors20 = plt.get_cmap("tab20").colors  # distinct colours for up to 20 curves
    for i, g in enumerate([g for g in ranked if g.gamma is not None][:top]):
        ax2.plot(t, [c if c is not None else float("nan") for c in g.gamma_curve], lw=1.2, label=g.label or g.name, color=colors20[i % 20])
    ax2.plot(t, [c if c is not None else float("nan") for c in scores.state_exponent.curve], "k--", lw=1.5, label="state perturbation")
    ax2.set_xlabel("lead step t")
    ax2.set_ylabel("gamma(t)")
    ax2.set_title(f"gamma(t), top {top} groups", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{scores.model}: trajectory-based quantization sensitivity", fontsize=11)
    return save(fig, path)


def plot_pareto(plan: Any, path: str | Path) -> Path:
    """Predicted (and measured) trajectory error against weight bytes over the plan's Pareto front, the plan starred."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    pts = [p for p in plan.pareto if not p.chosen]
    xs = [p.weight_bytes / 1024 for p in pts]
    nan = float("nan")
    ax.plot(xs, [p.predicted_error if p.predicted_error is not None else nan for p in pts], "o-", label="predicted (from TQS gains)")
    if any(p.measured_error is not None for p in pts):
        ax.plot(
            xs, [p.measured_error if p.measured_error is not None else nan for p in pts], "s--", label="measured (simulated quantization)"
        )
    if plan.predicted_error is not None:
        ax.plot([plan.weight_bytes / 1024], [plan.predicted_error], "r*", ms=14, label=f"this plan ({plan.target})")
    ax.axvline(plan.budget_bytes / 1024, color="grey", ls=":", lw=1)
    ax.set_xlabel("weight bytes (KiB)")
    ax.set_ylabel(f"normalised rollout error at T={plan.horizon}")
    ax.set_yscale("log")
    ax.set_title(f"{plan.model}: error vs size ({plan.runtime}, {plan.allocator})", fontsize=10)
    ax.legend(fontsize=8)
    return save(fig, path)


def plot_check(result: Any, path: str | Path) -> Path:
    """Normalised RMSE vs lead per variable (quantized vs float), with the tolerance; truth rows beside."""
    import numpy as np

    plt = pyplot()
    rows = result.rows
    n = 2 if "float_vs_truth" in rows else 1
    fig, axes = plt.subplots(1, n, figsize=(6.5 * n, 4.2), squeeze=False)
    ax = axes[0][0]
    grid = rows["quantized_vs_float"].nrmse
    leads = np.arange(1, len(grid) + 1)
    vals = np.array([[np.nan if v is None else v for v in r] for r in grid])
    many = vals.shape[1] > 10
    for j, name in enumerate(result.variables):
        ax.plot(leads, vals[:, j], lw=0.8 if many else 1.5, alpha=0.5 if many else 1, label=None if many else name)
    overall = [np.nan if v is None else v for v in rows["quantized_vs_float"].nrmse_by_lead]
    ax.plot(leads, overall, color="k", lw=2.2, label="all variables")
    ax.axhline(result.tolerance, color="r", ls="--", lw=1, label=f"tolerance {result.tolerance:g}")
    ax.set_xlabel("lead (steps)")
    ax.set_ylabel("normalised RMSE vs float")
    ax.set_title(f"{result.artifact} on {result.device['name']}: {'PASS' if result.passed else 'FAIL'}")
    ax.legend(fontsize=7, ncol=2)
    if n == 2:
        ax2 = axes[0][1]
        for key, style in (("quantized_vs_truth", "-"), ("float_vs_truth", "--")):
            y = [np.nan if v is None else v for v in rows[key].nrmse_by_lead]
            ax2.plot(np.arange(1, len(y) + 1), y, ls=style, lw=2, label=key.replace("_", " "))
        ax2.set_xlabel("lead (steps)")
        ax2.set_ylabel("normalised RMSE vs truth")
        ax2.set_title("against what happened")
        ax2.legend(fontsize=8)
    return save(fig, path)


def plot_memory(conv: Any, chk: Any, target: Any, path: str | Path) -> Path:
    """Horizontal bars: weights (flash/storage) and RAM, each against its budget, headroom shaded."""
    from ..allocation.plan import kib

    plt = pyplot()
    ram_used = conv.arena_bytes if conv.arena_bytes else chk.peak_rss_bytes
    ram_label = "RAM: tensor arena" if conv.arena_bytes else "RAM: peak of the check process"
    rows = [
        ("weights (stored)", conv.weight_bytes, target.weight_budget_bytes),
        ("artifact file", conv.file_bytes, target.weight_budget_bytes),
        (ram_label, ram_used or 0, target.ram_budget_bytes),
    ]
    fig, ax = plt.subplots(figsize=(9, 2.6))
    for i, (_, used, budget) in enumerate(rows[::-1]):
        share = used / budget if budget else 0
        ax.barh(i, 1.0, color="#e8eef5", edgecolor="#9bb0c8")
        ax.barh(i, min(share, 1.0), color="#b2182b" if share > 1 else "#2166ac")
        ax.text(min(share, 1.0) + 0.01, i, f"{used:,} B ({kib(used)}) of {budget:,} B: {share:.1%}", va="center", fontsize=8)
    ax.set_yticks(range(len(rows)), [r[0] for r in rows[::-1]], fontsize=8)
    ax.set_xlim(0, 1.45)
    ax.set_xticks([0, 0.25, 0.5, 0.75, 1.0], ["0", "25%", "50%", "75%", "budget"])
    ax.set_title(f"memory on {target.name} (fp32 weights would take {conv.fp32_weight_bytes:,} B)", fontsize=9)
    return save(fig, path)
