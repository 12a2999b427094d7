"""Rich tables rendered from result objects."""

from __future__ import annotations

from rich.table import Table

from .tqs import Scores


def scores_table(scores: Scores, top: int = 20) -> Table:
    ranked = scores.ranked()
    shown = ranked if top <= 0 else ranked[:top]
    st = scores.state.exponent
    t = Table(
        title=f"TQS of {scores.model} ({scores.settings.probe} probe, {scores.settings.granularity} groups, T={scores.horizon}, K={scores.contexts['k']})",
        caption=(f"model's own state exponent {st:+.3f}/step" if st is not None else "state exponent undefined")
        + (f"; showing {len(shown)} of {len(ranked)} groups" if len(shown) < len(ranked) else ""),
    )
    for col, just in (("rank", "right"), ("group", "left"), ("params", "right"), ("gamma", "right"), ("gain A", "right"), ("", "left")):
        t.add_column(col, justify=just)
    for i, g in enumerate(shown, 1):
        if g.diverged_step is not None:
            flag, gamma, gain = f"[red]non-finite at step {g.diverged_step}[/]", "inf", "inf"
        elif g.dead:
            flag, gamma, gain = "[dim]dead (no effect on the rollout)[/]", "-", "0"
        else:
            excess = g.gamma - st if (st is not None and g.gamma is not None) else None
            flag = "" if excess is None else f"{excess:+.3f} vs state"
            gamma, gain = f"{g.gamma:+.3f}", f"{g.gain:.3g}"
        t.add_row(str(i), g.name, f"{g.n_params:,}", gamma, gain, flag)
    return t
