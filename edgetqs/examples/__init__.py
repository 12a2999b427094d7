"""Bundled example forecasters (trained by scripts/train_examples.py) and `edgetqs init`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from ..errors import BadInputError, Hint

HERE = Path(__file__).parent
FILES = ("model.onnx", "contexts.npz", "edgetqs.toml", "card.md")


@dataclass(frozen=True)
class Example:
    name: str
    mode: str
    n_params: int
    description: str
    path: Path


def list_examples() -> list[Example]:
    out = []
    for d in sorted(p for p in HERE.iterdir() if (p / "card.json").exists()):
        card = json.loads((d / "card.json").read_text())
        out.append(Example(d.name, card["mode"], card["n_params"], card["description"], d))
    return out


def example_path(name: str) -> Path:
    """Folder of a bundled example.

    Raises:
        BadInputError: unknown name (the message lists the bundled ones).
    """
    names = [e.name for e in list_examples()]
    if name not in names:
        raise BadInputError(f"unknown example '{name}'; bundled examples: {', '.join(names) or 'none (run scripts/train_examples.py)'}")
    return HERE / name


def init_project(directory: str | Path, name: str, overwrite: bool = False) -> list[Path]:
    """Copy an example's model, contexts, project file and card into ``directory``.

    Raises:
        BadInputError: unknown example, or files already there without ``overwrite``.
    """
    from ..core.files import preflight, write_bytes

    src = example_path(name)
    dst = Path(directory)
    if dst.exists() and not dst.is_dir():
        raise BadInputError(f"'{dst}' exists and is not a folder; give a folder for the project")
    clash = [dst / f for f in FILES if (dst / f).exists() or (dst / f).is_symlink()]
    if clash and not overwrite:
        raise BadInputError(
            f"{', '.join(str(c) for c in clash)} already exist",
            hint=Hint("overwrite", ("--overwrite",), say="pass {args} to replace them, or choose another folder"),
        )
    policy = "replace" if overwrite else "refuse_existing"
    for f in FILES:
        preflight(dst / f, policy=policy)
    try:
        dst.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise BadInputError(f"cannot create the folder '{dst}': {exc.strerror}") from None
    return [write_bytes(dst / f, (src / f).read_bytes(), policy=policy) for f in FILES]
