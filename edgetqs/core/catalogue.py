"""Named definition files (targets, devices): where they are looked up and where each came from.

Search order, first match wins: the project's own folder (``./targets``, ``./devices``), then the folders in
``$EDGETQS_TARGETS_PATH`` / ``$EDGETQS_DEVICES_PATH`` (``os.pathsep``-separated), then the catalogue shipped
with edgetqs (inside the installed package; in a source checkout, the repository's top-level ``targets/``
and ``devices/`` folders, which stay the editable originals). A name defined in more than one place is
reported with what it shadows, so a project file that hides a shipped ``qemu-pi4`` is never silent.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TypeVar

from ..errors import BadInputError

NAME_RE = re.compile(r"^[A-Za-z0-9._-]+$")
T = TypeVar("T")


def check_name(name: str, what: str) -> str:
    """Names become parts of file names (bundles, check folders): letters, digits, ``.``, ``_`` and ``-`` only."""
    if not NAME_RE.match(name or "") or name in (".", ".."):
        raise BadInputError(f"{what} name {name!r}; expected letters, digits, '.', '_' or '-' only (it becomes part of a file name)")
    return name


def shipped_dir(kind: str) -> Path:
    """The shipped catalogue folder of ``kind`` (``targets`` or ``devices``)."""
    inside = Path(str(resources.files("edgetqs"))) / "catalogue" / kind  # an installed wheel
    if inside.is_dir():
        return inside
    return Path(__file__).resolve().parents[2] / kind  # a source checkout: the repository's top-level folder


@dataclass(frozen=True)
class Entry:
    name: str
    path: Path
    origin: str  # "project", "$EDGETQS_TARGETS_PATH", "shipped"
    shadows: tuple[Path, ...] = ()


def search_dirs(kind: str) -> list[tuple[Path, str]]:
    env = f"EDGETQS_{kind.upper()}_PATH"
    dirs = [(Path.cwd() / kind, "project")]
    for d in os.environ.get(env, "").split(os.pathsep):
        if d.strip():
            dirs.append((Path(d).expanduser(), f"${env}"))
    dirs.append((shipped_dir(kind), "shipped"))
    return dirs


def entries(kind: str) -> list[Entry]:
    """One entry per name (the first folder wins), with the files it shadows."""
    found: dict[str, Entry] = {}
    for d, origin in search_dirs(kind):
        if not d.is_dir():
            continue
        for f in sorted(d.glob("*.toml")):
            if f.stem in found:
                e = found[f.stem]
                if f.resolve() != e.path.resolve():
                    found[f.stem] = Entry(e.name, e.path, e.origin, e.shadows + (f,))
            else:
                found[f.stem] = Entry(f.stem, f, origin)
    return list(found.values())


def find(name_or_path: str, kind: str, load: Callable[[Path], T], announce: Callable[[str], None] | None = None) -> T:
    """Load a ``kind`` file by name (searched as above) or by path.

    Raises:
        BadInputError: no such name (the message lists the known ones) or a missing path.
    """
    what = kind.rstrip("s")
    text = str(name_or_path)
    p = Path(text)
    if p.suffix == ".toml" or os.sep in text or p.exists():
        if not p.is_file():
            raise BadInputError(f"{what} file '{p}' does not exist")
        return load(p)
    check_name(text, what)
    known = entries(kind)
    for e in known:
        if e.name == text:
            if e.shadows and announce is not None:
                announce(f"{what} '{text}' comes from {e.path} ({e.origin}), which shadows {', '.join(str(s) for s in e.shadows)}")
            return load(e.path)
    raise BadInputError(f"unknown {what} '{text}'; known {kind}: {', '.join(e.name for e in known)} (or give the path of a .toml file)")
