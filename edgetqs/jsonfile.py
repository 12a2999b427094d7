"""Result files: JSON written atomically (temporary name, then rename) and read with a clear error."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .errors import BadInputError


def write_json(path: str | Path, data: dict) -> Path:
    """Write ``data`` to ``path`` so that a reader never sees half a file (no NaN/Inf allowed)."""
    p = Path(path)
    p.parent.mkdir(parents=True, exist_ok=True)
    tmp = p.with_name(p.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1, allow_nan=False))
    tmp.replace(p)
    return p


def read_json(path: str | Path, what: str, command: str) -> dict:
    """Read a result file written by `write_json`.

    Args:
        what: its usual name (``scores.json``), for messages.
        command: the command that writes it, suggested when the file is missing.

    Raises:
        BadInputError: missing file or not JSON.
    """
    p = Path(path)
    if not p.exists():
        raise BadInputError(f"{what} file '{p}' does not exist; run `{command}` first")
    try:
        return json.loads(p.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BadInputError(f"'{p}' is not a {what} written by edgetqs ({exc})") from None


def finite_or_none(values) -> tuple[float | None, ...]:
    """JSON holds no NaN or Inf: a non-finite number (a diverged rollout) is written as null."""
    return tuple(float(v) if math.isfinite(v) else None for v in values)
