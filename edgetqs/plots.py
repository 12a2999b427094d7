"""Plots rendered from result objects (matplotlib, Agg backend, imported only when plotting)."""

from __future__ import annotations

from pathlib import Path

from .tqs import Scores


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on a field station or in CI
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path: str | Path) -> Path:
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    _pyplot().close(fig)
    return out


def plot_scores(scores: Scores, path: str | Path, top: int = 12) -> Path:
    """Two panels: gamma per group (ranked, dead and diverged marked) and gamma(t) curves of the
    most sensitive groups beside the model's own state exponent."""
    plt = _pyplot()
    ranked = scores.ranked()
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, max(4.0, 0.22 * len(ranked) + 1.5)))
    names = [g.name for g in ranked][::-1]
    finite = [g.gamma for g in ranked if g.gamma is not None]
    lo = min(finite) if finite else 0.0
    hi = max(finite) if finite else 1.0
    vals, colors = [], []
    for g in ranked[::-1]:
        if g.diverged_step is not None:
            vals.append(hi + 0.1 * (abs(hi) + 1)); colors.append("#b2182b")
        elif g.gamma is None:
            vals.append(lo - 0.1 * (abs(lo) + 1)); colors.append("#999999")
        else:
            vals.append(g.gamma); colors.append("#2166ac")
    ax1.barh(range(len(names)), vals, color=colors)
    ax1.set_yticks(range(len(names)), names, fontsize=7)
    ax1.set_xlabel("gamma (per step, ln units)")
    ax1.set_title(f"TQS per group ({scores.settings.probe} probe, T={scores.horizon}); red: diverged, grey: dead", fontsize=9)
    if scores.state.exponent is not None:
        ax1.axvline(scores.state.exponent, color="k", ls="--", lw=1, label="model's own exponent")
        ax1.legend(fontsize=7, loc="lower right")
    t = list(range(1, scores.horizon + 1))
    colors20 = plt.get_cmap("tab20").colors  # distinct colours for up to 20 curves
    for i, g in enumerate([g for g in ranked if g.gamma is not None][:top]):
        ax2.plot(t, [c if c is not None else float("nan") for c in g.gamma_curve], lw=1.2, label=g.name, color=colors20[i % 20])
    ax2.plot(t, [c if c is not None else float("nan") for c in scores.state.curve], "k--", lw=1.5, label="state perturbation")
    ax2.set_xlabel("lead step t")
    ax2.set_ylabel("gamma(t)")
    ax2.set_title(f"gamma(t), top {top} groups", fontsize=9)
    ax2.legend(fontsize=6, ncol=2)
    fig.suptitle(f"{scores.model}: trajectory-based quantization sensitivity", fontsize=11)
    return _save(fig, path)


def plot_pareto(front, measured: dict, chosen, path: str | Path) -> Path:
    """Predicted (and measured) trajectory error against weight bytes, the chosen plan marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    xs = [p.weight_bytes / 1024 for p in front]
    ax.plot(xs, [p.predicted_error if p.predicted_error is not None else float("nan") for p in front], "o-", label="predicted (from TQS gains)")
    if measured:
        ax.plot(xs, [measured[id(p)].error_at_horizon if id(p) in measured else float("nan") for p in front], "s--",
                label="measured (simulated quantization)")
    if chosen is not None and chosen.predicted_error is not None:
        ax.plot([chosen.weight_bytes / 1024], [chosen.predicted_error], "r*", ms=14, label=f"chosen ({chosen.target})")
    ax.axvline(chosen.budget_bytes / 1024 if chosen else 0, color="grey", ls=":", lw=1)
    ax.set_xlabel("weight bytes (KiB)")
    ax.set_ylabel(f"normalised rollout error at T={front[0].horizon}")
    ax.set_yscale("log")
    ax.set_title(f"{front[0].model}: error vs size ({front[0].runtime}, {front[0].allocator})", fontsize=10)
    ax.legend(fontsize=8)
    return _save(fig, path)
