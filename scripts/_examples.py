"""Shared by the report and benchmark scripts: a bundled example's scoring and held-out contexts, from its card's splits.

Each example's card.json declares ``splits`` (fractions of the shipped record: ``train``, ``score``,
``heldout``, pairwise disjoint; training read only ``train``) and the record's geometry
(``record_steps``, ``context_length``, ``rows_per_call``). `splits` draws K contexts from the score
and held-out fractions such that each context's window and its whole horizon of truth lie inside the
fraction, so no scoring rollout covers held-out time and neither covers training time.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgetqs.core.inputs import Inputs
    from edgetqs.core.project import Project


def card(name: str) -> dict[str, Any]:
    """The bundled example's card.json as a dict.

    Raises:
        BadInputError: unknown example name.
    """
    from edgetqs.examples import example_path

    return json.loads((example_path(name) / "card.json").read_text())


def split_span(c: dict[str, Any], which: str, horizon: int) -> str:
    """The ``--span`` text whose contexts keep ``horizon`` model calls of truth inside split ``which``.

    Args:
        c: the example's card.
        which: ``score`` or ``heldout``.
        horizon: model calls each rollout makes.

    Returns:
        ``START:STOP`` fractions: START is the split's; STOP is pulled in by the rows the rollout predicts.

    Raises:
        ValueError: the card has no such split, or the split has no room for one context with that horizon.
    """
    if which not in c.get("splits", {}):
        raise ValueError(
            f"example '{c.get('name')}' card has splits {sorted(c.get('splits', {}))}; expected '{which}' (retrain with scripts/train_examples.py)"
        )
    a, b = c["splits"][which]
    n = int(c["record_steps"])
    hi = int(b * n) - horizon * int(c["rows_per_call"])  # last row whose truth a context may use, plus one
    lo = int(a * n)
    if hi - int(c["context_length"]) < lo:
        raise ValueError(
            f"split '{which}' {a}:{b} of '{c.get('name')}' ({n} steps) cannot hold a context with {horizon} calls of truth; "
            "use a shorter horizon"
        )
    # half a row of slack: floor(STOP * n) must land on hi exactly, whatever the float rounding
    return f"{a!r}:{(hi + 0.5) / n!r}"


def splits(name: str, k: int, horizon: int | None = None) -> tuple[Project, int, Inputs, Inputs]:
    """(project, score horizon, scoring inputs, held-out inputs) of a bundled example, from its card's splits.

    Args:
        name: a bundled example (``edgetqs examples`` lists them).
        k: contexts per set, spread evenly over each split.
        horizon: model calls per rollout; default the project's ``[score] horizon``.

    Raises:
        ValueError: the card predates splits, or a split is too short for the horizon.
        ContextsError: K is more than a split has room for (the message says how many fit).
    """
    from edgetqs.core.inputs import resolve
    from edgetqs.core.project import load_project
    from edgetqs.examples import example_path

    c = card(name)
    proj = load_project(example_path(name) / "edgetqs.toml")
    h = int(horizon if horizon is not None else (proj.score.horizon if isinstance(proj.score.horizon, int) else 20))
    return proj, h, resolve(None, proj, k=k, span=split_span(c, "score", h)), resolve(None, proj, k=k, span=split_span(c, "heldout", h))


def halves(name: str, k: int) -> tuple[Project, int, Inputs, Inputs]:
    """Old name of `splits` (the first and second half of the record are no longer what the cards hold out)."""
    return splits(name, k)
