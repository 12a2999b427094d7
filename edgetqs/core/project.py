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

from pydantic import BaseModel, ConfigDict, ValidationError, field_validator

from ..errors import EdgetqsError, ProjectFileError
from .results import describe_validation_error

PROJECT_FILE = "edgetqs.toml"
MAX_WORKERS = 1024
MAX_SEED = 2**63 - 1  # seeds are stored in scores.json: JSON readers hold integers up to int64


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
    forcing: tuple[str, ...] = ()  # INPUT=SOURCE[+SOURCE...][@predicted] (`edgetqs.core.forcings`)
    latitude: float | None = None  # the site, degrees north (solar_elevation forcings)
    longitude: float | None = None  # degrees east

    @field_validator("forcing")
    @classmethod
    def _forcing(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        from .forcings import parse_forcing

        for text in v:
            try:
                parse_forcing(text)
            except EdgetqsError as exc:
                raise ValueError(str(exc)) from None
        return v

    @field_validator("latitude", "longitude")
    @classmethod
    def _degrees(cls, v: float | None, info: Any) -> float | None:
        top = 90.0 if info.field_name == "latitude" else 180.0
        if v is not None and not (-top <= v <= top):
            raise ValueError(f"expected degrees from -{top:g} to {top:g}")
        return v


class ScoreConfig(Config):
    """``[score]``: probe settings (see `edgetqs.sensitivity.scores.ProbeSettings`), and where the sweep runs:
    ``workers`` (0: a process per core for large models), ``backend`` (serial, processes, ray:
    `edgetqs.sensitivity.backends`) and the Ray ``address``."""

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
    backend: str | None = None
    address: str | None = None

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_WORKERS:
            raise ValueError(f"expected 0 (a process per core) to {MAX_WORKERS} worker processes")
        return v

    @field_validator("seed")
    @classmethod
    def _seed(cls, v: int | None) -> int | None:
        if v is not None and not 0 <= v <= MAX_SEED:
            raise ValueError(f"expected a seed from 0 to {MAX_SEED} (2**63 - 1)")
        return v


class ProjectFile(Config):
    """The whole of ``edgetqs.toml``; paths are relative to the file."""

    name: str | None = None
    model: str | None = None
    contexts: str | None = None
    variables: tuple[str, ...] = ()
    k: int | None = None
    pick: Literal["even", "random"] | None = None  # how contexts are spread over the record (random: seeded by [score] seed)
    fill: Literal["ffill", "interpolate", "mean"] | None = None  # NaN/Inf in the contexts (`edgetqs.core.missing`)
    rollout: RolloutConfig = RolloutConfig()
    score: ScoreConfig = ScoreConfig()

    @field_validator("name")
    @classmethod
    def _name(cls, v: str | None) -> str | None:
        from .catalogue import NAME_RE

        if v is not None and (not NAME_RE.match(v) or v in (".", "..")):
            raise ValueError("expected letters, digits, '.', '_' or '-' only (it becomes part of the bundle's folder name)")
        return v

    @field_validator("model", "contexts")
    @classmethod
    def _path(cls, v: str | None) -> str | None:
        if v is not None and (not v.strip() or "\0" in v):
            raise ValueError("expected the path of a file, relative to edgetqs.toml")
        return v

    @field_validator("variables")
    @classmethod
    def _variables(cls, v: tuple[str, ...]) -> tuple[str, ...]:
        if any(not x.strip() for x in v) or len(set(v)) != len(v):
            raise ValueError("expected distinct, non-empty variable names")
        return v

    @field_validator("k")
    @classmethod
    def _k(cls, v: int | None) -> int | None:
        from .inputs import MAX_CONTEXTS

        if v is not None and not 1 <= v <= MAX_CONTEXTS:
            raise ValueError(f"expected 1 to {MAX_CONTEXTS:,} contexts")
        return v


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
    def pick(self) -> str | None:
        return self.file.pick

    @property
    def fill(self) -> str | None:
        return self.file.fill

    @property
    def rollout(self) -> RolloutConfig:
        return self.file.rollout

    @property
    def score(self) -> ScoreConfig:
        return self.file.score


def toml_dates(data: Any, prefix: str = "") -> str | None:
    """The dotted key of the first TOML date or time in ``data`` (None: there is none).

    No edgetqs setting is a date: one would otherwise reach the schema as its text and pass for a string."""
    import datetime as dt

    items = data.items() if isinstance(data, dict) else enumerate(data) if isinstance(data, list) else ()
    for k, v in items:
        key = f"{prefix}.{k}" if prefix and isinstance(k, str) else (f"{prefix}[{k}]" if prefix else str(k))
        if isinstance(v, (dt.date, dt.time)):
            return key
        found = toml_dates(v, key)
        if found:
            return found
    return None


def load_project(path: str | Path) -> Project:
    """Read and validate a project file.

    Raises:
        ProjectFileError: unreadable TOML, an unknown table or key, or a value of the wrong type.
    """
    from .files import input_file

    try:
        p = input_file(path, "project file")
    except EdgetqsError as exc:
        raise ProjectFileError(str(exc)) from None
    try:
        data = tomllib.loads(p.read_text())
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ProjectFileError(f"cannot read project file '{p}': {exc}") from None
    date = toml_dates(data)
    if date:
        raise ProjectFileError(f"{p}: '{date}' is a TOML date or time; expected a string, number or list (quote it)")
    try:
        return Project(p, ProjectFile.model_validate_json(json.dumps(data)))
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
