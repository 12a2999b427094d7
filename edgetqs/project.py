"""`edgetqs.toml`: the optional project file (model, contexts, rollout, score settings).

Unknown keys are an error that names the file and the key: a typo must not silently fall back
on a default.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .errors import ProjectFileError

PROJECT_FILE = "edgetqs.toml"

_SCHEMA: dict[str, dict[str, type | tuple[type, ...]]] = {
    "": {"model": str, "contexts": str, "variables": list, "k": int, "name": str},
    "rollout": {"mode": str, "state": list, "increment": bool, "static": list, "output_slice": str, "channel_axis": int},
    "score": {"probe": str, "granularity": str, "block_depth": int, "horizon": (int, str), "max_horizon": int,
              "seed": int, "scale": float, "bits": int, "workers": int, "ladder": list},
}


@dataclass(frozen=True)
class Project:
    """A parsed project file; paths resolved against the file's folder."""

    path: Path
    model: Path | None = None
    contexts: Path | None = None
    variables: tuple[str, ...] = ()
    k: int | None = None
    name: str | None = None
    rollout: dict[str, Any] = field(default_factory=dict)
    score: dict[str, Any] = field(default_factory=dict)


def load_project(path: str | Path) -> Project:
    """Read and validate a project file.

    Raises:
        ProjectFileError: unreadable TOML, an unknown table or key, or a value of the wrong type.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ProjectFileError(f"cannot read project file '{p}': {exc}") from None
    top = {k: v for k, v in data.items() if not isinstance(v, dict)}
    tables = {k: v for k, v in data.items() if isinstance(v, dict)}
    _check(p, "", top)
    for t, body in tables.items():
        if t not in _SCHEMA or t == "":
            raise ProjectFileError(f"{p}: unknown table [{t}]; expected one of [rollout], [score]")
        _check(p, t, body)
    base = p.parent
    return Project(
        path=p,
        model=(base / top["model"]) if "model" in top else None,
        contexts=(base / top["contexts"]) if "contexts" in top else None,
        variables=tuple(top.get("variables", ())),
        k=top.get("k"),
        name=top.get("name"),
        rollout=dict(tables.get("rollout", {})),
        score=dict(tables.get("score", {})),
    )


def _check(p: Path, table: str, body: dict[str, Any]) -> None:
    schema = _SCHEMA[table]
    where = f"[{table}] " if table else ""
    for key, value in body.items():
        if key not in schema:
            raise ProjectFileError(f"{p}: unknown key {where}'{key}'; expected one of {sorted(schema)}")
        want = schema[key]
        ok = isinstance(value, want) and not (isinstance(value, bool) and want in (int, float))
        if want is float and isinstance(value, int) and not isinstance(value, bool):
            ok = True
        if not ok:
            names = "/".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise ProjectFileError(f"{p}: {where}'{key}' = {value!r} has type {type(value).__name__}; expected {names}")


def find_project(start: Path | None = None) -> Project | None:
    """The project file in the current folder, if any."""
    p = (start or Path.cwd()) / PROJECT_FILE
    return load_project(p) if p.exists() else None
