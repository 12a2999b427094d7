"""``manifest.json``: what a bundle holds (sha256 and size of every file), for whom, and its verdict."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any, ClassVar

from ..core.results import Frozen, ResultFile


class FileEntry(Frozen):
    sha256: str
    bytes: int


class Manifest(ResultFile):
    KIND: ClassVar[str] = "manifest.json"
    COMMAND: ClassVar[str] = "edgetqs build"
    SCHEMA_VERSION: ClassVar[int] = 2

    schema_version: int = SCHEMA_VERSION
    created_utc: str
    model: dict[str, Any]  # name, sha256, path
    target: dict[str, Any]  # name, arch, file, budgets, validation horizon and tolerance
    budget_bytes: int
    format: str
    runtime: str
    artifact: str
    device: dict[str, Any]
    sizes: dict[str, int | None]  # weight, file, fp32 weight, fp32 file, arena, peak RSS bytes
    passed: bool
    verdict: str
    scores_cached: bool
    versions: dict[str, str | None]
    stage_seconds: dict[str, float]
    notes: tuple[str, ...] = ()
    files: dict[str, FileEntry]


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def file_entries(folder: Path) -> dict[str, FileEntry]:
    return {
        f.name: FileEntry(sha256=sha256_file(f), bytes=f.stat().st_size)
        for f in sorted(folder.iterdir())
        if f.is_file() and f.name != "manifest.json"
    }


def verify_manifest(bundle: Path) -> list[str]:
    """Files whose sha256 or size differ from the manifest, or that are missing or unlisted."""
    m = Manifest.load(bundle / "manifest.json")
    bad = []
    for name, info in m.files.items():
        p = bundle / name
        if not p.exists():
            bad.append(f"{name}: missing")
        elif p.stat().st_size != info.bytes or sha256_file(p) != info.sha256:
            bad.append(f"{name}: changed")
    for p in bundle.iterdir():
        if p.name not in m.files and p.name != "manifest.json":
            bad.append(f"{p.name}: not in the manifest")
    return bad
