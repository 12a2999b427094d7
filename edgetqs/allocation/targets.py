"""Targets: a device class and its budget, read from ``targets/NAME.toml`` (or any path).

Schema (`TargetFile`; unknown keys and wrong types are errors naming the file and the key):

    name, description, arch                       strings (name: letters, digits, '.', '_', '-')
    runtimes = ["ort", "tflite"]                  registered runtimes in order of preference
    weight_budget_bytes, ram_budget_bytes         positive integers (flash/storage for weights; RAM working set)
    default_device = "qemu-pi4"                   where `check` runs by default
    [validation] horizon = 20, tolerance = 0.1    rollout steps and normalised-RMSE tolerance
    [precisions.RUNTIME]                          precisions each runtime executes, per weight role:
        default = [...]                           any weight
        Conv = [...]                              the weight input of that ONNX op type
        "Conv.bias" = [...]                       the bias input of Conv / Gemm (else: default)
    [activations] tflm = ["int16", "int8"]        activation widths each runtime executes, the default first
                  ort = ["float", "int8"]         (float: weight-only; int8/int16: static integer kernels;
                  tflite = ["float", "dynamic", "int8", "int16"]
                                                  dynamic: int8 activations quantized per call)

Shipped targets live in the top-level ``targets/`` folder of the repository (inside the package once
installed); `edgetqs.core.catalogue` says where names are looked up.
"""

from __future__ import annotations

import json
import math
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, field_validator, model_validator

from ..core import catalogue
from ..core.project import Config, toml_dates
from ..core.quantize import Precision
from ..core.results import describe_validation_error
from ..errors import BadInputError, EdgetqsError

MAX_VALIDATION_HORIZON = 10_000
MAX_TOLERANCE = 100.0  # normalised RMSE: an error 100 times a variable's spread checks nothing


class TargetFileError(EdgetqsError):
    """A target file is missing, malformed, or has an unknown key."""


class Validation(Config):
    """``[validation]``: the on-device check's rollout length and tolerance."""

    horizon: int = 20
    tolerance: float = 0.1

    @field_validator("horizon")
    @classmethod
    def _horizon(cls, v: int) -> int:
        if not 1 <= v <= MAX_VALIDATION_HORIZON:
            raise ValueError(f"expected 1..{MAX_VALIDATION_HORIZON:,} rollout steps")
        return v

    @field_validator("tolerance")
    @classmethod
    def _tolerance(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 < v <= MAX_TOLERANCE):
            raise ValueError(f"expected a positive normalised RMSE up to {MAX_TOLERANCE:g}")
        return v


class TargetFile(Config):
    """A target file as written."""

    name: str
    description: str = ""
    arch: str
    runtimes: tuple[str, ...]
    weight_budget_bytes: int
    ram_budget_bytes: int
    default_device: str = "local"
    validation: Validation = Validation()
    precisions: dict[str, dict[str, tuple[Precision, ...]]]
    activations: dict[str, tuple[Literal["float", "int16", "int8", "dynamic"], ...]] = Field(default_factory=dict)

    @field_validator("name", "default_device")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return catalogue.check_name(v, "a")
        except BadInputError:
            raise ValueError("expected letters, digits, '.', '_' or '-' only") from None

    @field_validator("weight_budget_bytes", "ram_budget_bytes")
    @classmethod
    def _positive(cls, v: int) -> int:
        from .plan import MAX_BUDGET_BYTES  # the one cap of every budget (plan.py imports this module)

        if not 0 < v <= MAX_BUDGET_BYTES:
            raise ValueError("expected a positive number of bytes up to 1 PiB (2**50)")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> TargetFile:
        from ..runtimes import RUNTIMES

        if not self.runtimes:
            raise ValueError("'runtimes' is empty; list at least one of " + ", ".join(RUNTIMES.names()))
        for r in self.runtimes:
            if r not in RUNTIMES:
                raise ValueError(f"runtimes lists '{r}'; expected some of {', '.join(RUNTIMES.names())}")
        for r in set(self.precisions) | set(self.activations):
            if r not in RUNTIMES:
                raise ValueError(f"unknown runtime '{r}' in [precisions] or [activations]; expected one of {', '.join(RUNTIMES.names())}")
        missing = [r for r in self.runtimes if r not in self.precisions]
        if missing:
            raise ValueError(f"runtimes {missing} have no [precisions.RUNTIME] table")
        for r, table in self.precisions.items():
            for role, options in table.items():
                if not options:
                    raise ValueError(f"precisions.{r}.{role} is empty; list at least one precision")
        for r, acts in self.activations.items():
            if not acts:
                raise ValueError(f"activations.{r} is empty; list float, int16 and/or int8")
            if RUNTIMES.get(r).full_integer and "float" in acts:
                raise ValueError(f"'activations.{r}' lists float, but {r} runs full-integer models only; list int16 and/or int8")
            if r not in self.runtimes:
                raise ValueError(f"'activations.{r}': {r} is not among the target's runtimes {list(self.runtimes)}")
            other = [a for a in acts if a not in RUNTIMES.get(r).activations]
            if other:
                raise ValueError(f"'activations.{r}' lists {', '.join(other)}; {r} writes {', '.join(RUNTIMES.get(r).activations)}")
        return self


class Target(TargetFile):
    """A validated target, with the file it came from."""

    _path: str = PrivateAttr(default="")

    @property
    def path(self) -> str:
        return self._path

    @property
    def validation_horizon(self) -> int:
        return self.validation.horizon

    @property
    def validation_tolerance(self) -> float:
        return self.validation.tolerance

    def allowed(self, runtime: str, op_type: str, role: str) -> tuple[Precision, ...]:
        """Precisions ``runtime`` executes for a weight: its role (``Conv.bias``) beats its op type
        (``Conv``), which beats ``default``. An op-type entry describes the op's weight input, so a
        bias without an entry of its own falls back on ``default``, never on its op's weight list."""
        table = self.precisions.get(runtime)
        if table is None:
            raise BadInputError(f"target '{self.name}' has no precisions for runtime '{runtime}'; it lists {sorted(self.precisions)}")
        keys = (role, "default") if role.endswith(".bias") else (role, op_type, "default")
        for key in keys:
            if key in table:
                return table[key]
        raise BadInputError(f"target '{self.name}' ({self.path}): runtime '{runtime}' lists no precisions for '{role}' and no 'default'")

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "arch": self.arch,
            "runtimes": list(self.runtimes),
            "file": self.path,
            "weight_budget_bytes": self.weight_budget_bytes,
            "ram_budget_bytes": self.ram_budget_bytes,
            "validation_horizon": self.validation_horizon,
            "validation_tolerance": self.validation_tolerance,
        }


def load_target(path: str | Path) -> Target:
    """Read and validate one target file.

    Raises:
        TargetFileError: unreadable TOML, unknown or missing key, wrong type, unknown runtime or precision.
    """
    from ..core.files import input_file

    try:
        p = input_file(path, "target file")
    except EdgetqsError as exc:
        raise TargetFileError(str(exc)) from None
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise TargetFileError(f"cannot read target file '{p}': {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise TargetFileError(f"{p}: not valid TOML ({exc})") from None
    date = toml_dates(data)
    if date:
        raise TargetFileError(f"{p}: '{date}' is a TOML date or time; expected a string, number or list (quote it)")
    try:
        t = Target.model_validate_json(json.dumps(data))
    except ValidationError as exc:
        raise TargetFileError(describe_validation_error(exc, str(p))) from None
    t._path = str(p)
    return t


def target_files() -> list[catalogue.Entry]:
    """Every target by name (project folder, $EDGETQS_TARGETS_PATH, shipped), with its origin."""
    return catalogue.entries("targets")


def find_target(name_or_path: str, announce: Callable[[str], None] | None = None) -> Target:
    """A target by name (``raspberrypi``) or by the path of a user's own file.

    Raises:
        BadInputError: no such target (the message lists the known ones).
    """
    return catalogue.find(name_or_path, "targets", load_target, announce)
