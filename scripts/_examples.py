"""Shared by the report and benchmark scripts: a bundled example cut into scoring and held-out halves."""

from __future__ import annotations


def halves(name: str, k: int):
    """(project, score horizon, inputs with contexts from the record's first half, from its second half)."""
    from edgetqs.core.inputs import resolve
    from edgetqs.core.project import load_project

    from edgetqs.examples import example_path

    proj = load_project(example_path(name) / "edgetqs.toml")
    horizon = int(proj.score.horizon or 20)
    return proj, horizon, resolve(None, proj, k=k, span="0:0.5"), resolve(None, proj, k=k, span="0.5:1")
