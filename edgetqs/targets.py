"""Targets: a device class and its budget, read from `targets/NAME.toml` (or any path).

Schema (unknown keys are an error naming the file and the key):

    name, description, arch                       strings
    runtimes = ["ort", "tflite"]                  in order of preference (ort, ort-mobile, tflite, tflm)
    weight_budget_bytes, ram_budget_bytes         integers (flash/storage for weights; RAM working set)
    default_device = "qemu-pi4"                   where `check` runs by default
    [validation] horizon = 20, tolerance = 0.1    rollout steps and normalised-RMSE tolerance
    [precisions.RUNTIME]                          precisions each runtime executes, per weight role:
        default = [...]                           any weight
        Conv = [...]                              the weight input of that ONNX op type
        "Conv.bias" = [...]                       the bias input of Conv / Gemm (else: default)
    [activations] tflm = ["int16", "int8"]        activation types of full-integer runtimes, preferred first
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import BadInputError, EdgetqsError
from .quantize import RUNTIMES, Precision, parse_precision


class TargetFileError(EdgetqsError):
    """A target file is missing, malformed, or has an unknown key."""


TARGET_DIRS = [Path.cwd() / "targets", Path(__file__).resolve().parents[1] / "targets"]

_TOP: dict[str, type | tuple[type, ...]] = {
    "name": str, "description": str, "arch": str, "runtimes": list, "weight_budget_bytes": int,
    "ram_budget_bytes": int, "default_device": str, "validation": dict, "precisions": dict, "activations": dict,
}
_ACTIVATIONS = ("int8", "int16")
_REQUIRED = ("name", "arch", "runtimes", "weight_budget_bytes", "ram_budget_bytes", "precisions")
_VALIDATION: dict[str, type | tuple[type, ...]] = {"horizon": int, "tolerance": (float, int)}


@dataclass(frozen=True)
class Target:
    """A parsed, validated target file."""

    name: str
    arch: str
    runtimes: tuple[str, ...]
    weight_budget_bytes: int
    ram_budget_bytes: int
    precisions: dict[str, dict[str, tuple[Precision, ...]]]
    description: str = ""
    default_device: str = "local"
    validation_horizon: int = 20
    validation_tolerance: float = 0.1
    path: str = ""
    activations: dict[str, tuple[str, ...]] | None = None  # runtime -> activation types, preferred first

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

    def to_dict(self) -> dict:
        return {
            "name": self.name, "arch": self.arch, "runtimes": list(self.runtimes),
            "weight_budget_bytes": self.weight_budget_bytes, "ram_budget_bytes": self.ram_budget_bytes,
            "default_device": self.default_device, "validation": {"horizon": self.validation_horizon, "tolerance": self.validation_tolerance},
            "path": self.path,
        }


def _type_name(t: type | tuple[type, ...]) -> str:
    return "/".join(x.__name__ for x in (t if isinstance(t, tuple) else (t,)))


def _check_type(path: Path, key: str, value: object, want: type | tuple[type, ...]) -> None:
    ok = isinstance(value, want) and not (isinstance(value, bool) and bool not in (want if isinstance(want, tuple) else (want,)))
    if not ok:
        raise TargetFileError(f"{path}: '{key}' = {value!r} has type {type(value).__name__}; expected {_type_name(want)}")


def load_target(path: str | Path) -> Target:
    """Read and validate one target file.

    Raises:
        TargetFileError: unreadable TOML, unknown or missing key, wrong type, unknown runtime or precision.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise TargetFileError(f"cannot read target file '{p}': {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise TargetFileError(f"{p}: not valid TOML ({exc})") from None
    for key, value in data.items():
        if key not in _TOP:
            raise TargetFileError(f"{p}: unknown key '{key}'; expected one of {sorted(_TOP)}")
        _check_type(p, key, value, _TOP[key])
    for key in _REQUIRED:
        if key not in data:
            raise TargetFileError(f"{p}: missing key '{key}' ({_type_name(_TOP[key])})")
    runtimes = data["runtimes"]
    for r in runtimes:
        if r not in RUNTIMES:
            raise TargetFileError(f"{p}: runtimes lists '{r}'; expected some of {list(RUNTIMES)}")
    for key in ("weight_budget_bytes", "ram_budget_bytes"):
        if data[key] <= 0:
            raise TargetFileError(f"{p}: '{key}' = {data[key]}; expected a positive number of bytes")
    val = data.get("validation", {})
    for key, value in val.items():
        if key not in _VALIDATION:
            raise TargetFileError(f"{p}: unknown key 'validation.{key}'; expected one of {sorted(_VALIDATION)}")
        _check_type(p, f"validation.{key}", value, _VALIDATION[key])
    precisions: dict[str, dict[str, tuple[Precision, ...]]] = {}
    for runtime, table in data["precisions"].items():
        if runtime not in RUNTIMES:
            raise TargetFileError(f"{p}: unknown runtime 'precisions.{runtime}'; expected one of {list(RUNTIMES)}")
        _check_type(p, f"precisions.{runtime}", table, dict)
        parsed = {}
        for role, names in table.items():
            _check_type(p, f"precisions.{runtime}.{role}", names, list)
            try:
                parsed[role] = tuple(parse_precision(n) for n in names)
            except BadInputError as exc:
                raise TargetFileError(f"{p}: precisions.{runtime}.{role}: {exc}") from None
            if not parsed[role]:
                raise TargetFileError(f"{p}: precisions.{runtime}.{role} is empty; list at least one precision")
        precisions[runtime] = parsed
    activations: dict[str, tuple[str, ...]] = {}
    for runtime, names in data.get("activations", {}).items():
        if runtime != "tflm":
            raise TargetFileError(f"{p}: 'activations.{runtime}': only the full-integer runtime 'tflm' takes activation types")
        _check_type(p, f"activations.{runtime}", names, list)
        bad = [n for n in names if n not in _ACTIVATIONS]
        if bad or not names:
            raise TargetFileError(f"{p}: activations.{runtime} = {names!r}; expected a non-empty list of {list(_ACTIVATIONS)}")
        activations[runtime] = tuple(names)
    missing = [r for r in runtimes if r not in precisions]
    if missing:
        raise TargetFileError(f"{p}: runtimes {missing} have no [precisions.RUNTIME] table")
    return Target(
        name=data["name"], arch=data["arch"], runtimes=tuple(runtimes), weight_budget_bytes=data["weight_budget_bytes"],
        ram_budget_bytes=data["ram_budget_bytes"], precisions=precisions, description=data.get("description", ""),
        default_device=data.get("default_device", "local"), validation_horizon=val.get("horizon", 20),
        validation_tolerance=float(val.get("tolerance", 0.1)), path=str(p), activations=activations,
    )


def named_files(dirs: list[Path]) -> list[Path]:
    """``*.toml`` files in ``dirs``, one per name (the first folder wins: ./targets before the shipped ones)."""
    seen: dict[str, Path] = {}
    for d in dirs:
        if d.is_dir():
            for f in sorted(d.glob("*.toml")):
                seen.setdefault(f.stem, f)
    return list(seen.values())


def find_named(name_or_path: str, dirs: list[Path], kind: str, load):
    """Load a ``kind`` file by name (searched in ``dirs``) or by path.

    Raises:
        BadInputError: no such name (the message lists the known ones) or a missing path.
    """
    p = Path(name_or_path)
    if p.suffix == ".toml" or p.exists():
        if not p.exists():
            raise BadInputError(f"{kind} file '{p}' does not exist")
        return load(p)
    files = named_files(dirs)
    for f in files:
        if f.stem == name_or_path:
            return load(f)
    known = ", ".join(f.stem for f in files)
    raise BadInputError(f"unknown {kind} '{name_or_path}'; known {kind}s: {known} (or give the path of a .toml file)")


def target_files() -> list[Path]:
    """Shipped and local target files, local ones (./targets) first; one per name."""
    return named_files(TARGET_DIRS)


def find_target(name_or_path: str) -> Target:
    """A target by name (``raspberrypi``) or by the path of a user's own file.

    Raises:
        BadInputError: no such target (the message lists the known ones).
    """
    return find_named(name_or_path, TARGET_DIRS, "target", load_target)
