"""`edgetqs.toml`: the optional project file (model, contexts, rollout, score settings), and the one place
where settings are merged: a command-line option beats the project file, which beats the default.

Unknown keys and wrong types are errors that name the file and the key: a typo must not silently fall
back on a default.
"""

from __future__ import annotations

import json
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import ProjectFileError
from .results import describe_validation_error

PROJECT_FILE = "edgetqs.toml"


class Config(BaseModel):
    """Base of the sections of a config file: strict types (``"5"`` is not a number), unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", strict=True)


class RolloutConfig(Config):
    """``[rollout]``: how outputs feed back (see `edgetqs.core.rollout.RolloutSpec`); unset values are inferred."""

    mode: Literal["state", "window"] | None = None
    state: tuple[str, ...] = ()  # INPUT=OUTPUT pairs
    increment: bool | None = None
    static: tuple[str, ...] = ()
    output_slice: str | None = None
    channel_axis: int | None = None


class ScoreConfig(Config):
    """``[score]``: probe settings (see `edgetqs.sensitivity.scores.ProbeSettings`) and workers."""

    probe: str | None = None
    granularity: Literal["tensor", "block"] | None = None
    block_depth: int | None = None
    horizon: int | Literal["auto"] | None = None
    max_horizon: int | None = None
    seed: int | None = None
    scale: float | None = None
    bits: int | None = None
    workers: int | None = None
    ladder: tuple[int, ...] | None = None
    eps: Literal["relative", "absolute"] | None = None
    include: tuple[str, ...] | None = None  # weight rules: exact names or re:REGEX (`edgetqs.core.weights`)
    exclude: tuple[str, ...] | None = None


class ProjectFile(Config):
    """The whole of ``edgetqs.toml``; paths are relative to the file."""

    name: str | None = None
    model: str | None = None
    contexts: str | None = None
    variables: tuple[str, ...] = ()
    k: int | None = None
    rollout: RolloutConfig = RolloutConfig()
    score: ScoreConfig = ScoreConfig()


@dataclass(frozen=True)
class Project:
    """A parsed project file with its paths resolved against the file's folder."""

    path: Path
    file: ProjectFile

    @property
    def model(self) -> Path | None:
        return self.path.parent / self.file.model if self.file.model else None

    @property
    def contexts(self) -> Path | None:
        return self.path.parent / self.file.contexts if self.file.contexts else None

    @property
    def name(self) -> str | None:
        return self.file.name

    @property
    def variables(self) -> tuple[str, ...]:
        return self.file.variables

    @property
    def k(self) -> int | None:
        return self.file.k

    @property
    def rollout(self) -> RolloutConfig:
        return self.file.rollout

    @property
    def score(self) -> ScoreConfig:
        return self.file.score


def load_project(path: str | Path) -> Project:
    """Read and validate a project file.

    Raises:
        ProjectFileError: unreadable TOML, an unknown table or key, or a value of the wrong type.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProjectFileError(f"cannot read project file '{p}': {exc}") from None
    try:
        return Project(p, ProjectFile.model_validate_json(json.dumps(data, default=str)))
    except ValidationError as exc:
        raise ProjectFileError(describe_validation_error(exc, str(p))) from None


def find_project(start: Path | None = None) -> Project | None:
    """The project file in the current folder, if any."""
    p = (start or Path.cwd()) / PROJECT_FILE
    return load_project(p) if p.exists() else None


def open_project(project: str | Path | Project | None) -> Project | None:
    """The given project (a path or a loaded one), else ./edgetqs.toml when present."""
    if isinstance(project, Project):
        return project
    return load_project(project) if project else find_project()


C = TypeVar("C", bound=BaseModel)


def merged(base: C, overrides: C | dict[str, Any] | None) -> C:
    """``base`` with every value ``overrides`` sets (not None) replacing it: the one rule for
    "the command line beats the project file". Values are validated again."""
    if overrides is None:
        return base
    given = overrides.model_dump(exclude_defaults=True) if isinstance(overrides, BaseModel) else dict(overrides)
    given = {k: v for k, v in given.items() if v is not None and v != ()}
    if not given:
        return base
    return type(base).model_validate_json(json.dumps({**base.model_dump(mode="json"), **given}, default=list))
