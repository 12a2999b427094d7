"""Typed, frozen, versioned files: every file a user writes (configs) or reads (results) is a pydantic model.

One definition gives validation, JSON and a JSON Schema (``schemas/``). Unknown keys are errors that
name the file and the key, never silently ignored. Result files carry ``schema_version`` and the
``edgetqs_version`` that wrote them; `ResultFile.load` refuses another schema version with advice.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, ClassVar, Self

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import BadInputError


class Frozen(BaseModel):
    """Base of every typed record: immutable, unknown keys refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", protected_namespaces=())


_TYPE_NAMES = {
    "int_type": "int",
    "int_from_float": "int",
    "float_type": "float",
    "string_type": "str",
    "bool_type": "bool",
    "list_type": "list",
    "tuple_type": "list",
    "dict_type": "table",
    "model_type": "table",
    "int_parsing": "int",
    "float_parsing": "float",
}


def describe_validation_error(exc: ValidationError, where: str) -> str:
    """One clause per problem: ``where: 'a.b' = value has type str; expected int``, ``unknown key 'x'``..."""
    parts = []
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")  # a typo first: it usually explains the rest
    for e in errors[:5]:
        loc = ".".join(str(x) for x in e["loc"]) or "(top level)"
        kind = e["type"]
        value = e.get("input")
        shown = repr(value) if not isinstance(value, (dict, list, tuple)) else type(value).__name__
        if kind == "extra_forbidden":
            key, table = str(e["loc"][-1]), ".".join(str(x) for x in e["loc"][:-1])
            parts.append(f"unknown key '{key}'" + (f" in [{table}]" if table else ""))
        elif kind == "missing":
            parts.append(f"missing key '{loc}'")
        elif kind in _TYPE_NAMES:
            parts.append(f"'{loc}' = {shown[:80]} has type {type(value).__name__}; expected {_TYPE_NAMES[kind]}")
        elif kind == "value_error":
            msg = str(e["msg"]).removeprefix("Value error, ")
            parts.append(msg if not e["loc"] else f"'{loc}' = {shown[:80]}: {msg}")
        else:
            parts.append(f"'{loc}' = {shown[:80]}: {e['msg']}")
    more = f" (and {len(exc.errors()) - 5} more)" if len(exc.errors()) > 5 else ""
    return f"{where}: " + "; ".join(parts) + more


def finite_or_none(values: Any) -> tuple[float | None, ...]:
    """JSON holds no NaN or Inf: a non-finite number (a diverged rollout) is written as null."""
    return tuple(float(v) if v is not None and math.isfinite(v) else None for v in values)


class ResultFile(Frozen):
    """A result written as JSON by one command and read by the next.

    Subclasses set ``KIND`` (its usual file name), ``COMMAND`` (what writes it) and ``SCHEMA_VERSION``.
    """

    KIND: ClassVar[str] = "result"
    COMMAND: ClassVar[str] = "edgetqs"
    SCHEMA_VERSION: ClassVar[int] = 1

    schema_version: int
    edgetqs_version: str

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    def save(self, path: str | Path, policy: str = "replace_result") -> Path:
        """Write JSON atomically (`edgetqs.core.files`): by default an existing file is replaced only when it
        is a previous result of the same kind, anything else is refused with advice."""
        from .files import write_json

        return write_json(path, self.to_json_dict(), policy=policy, kind=self.KIND.split(".")[0])

    @classmethod
    def from_json_dict(cls, data: Any, where: str = "") -> Self:
        """Validate a parsed JSON document.

        Raises:
            BadInputError: not an object, another schema version, or fields that do not validate.
        """
        where = where or cls.KIND
        if not isinstance(data, dict):
            raise BadInputError(f"'{where}' is not a {cls.KIND} written by edgetqs (the top level is {type(data).__name__}, not an object)")
        version = data.get("schema_version")
        if version != cls.SCHEMA_VERSION:
            raise BadInputError(
                f"'{where}' has schema_version {version!r}; this edgetqs reads {cls.KIND} version {cls.SCHEMA_VERSION}: "
                f"rerun `{cls.COMMAND}`"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise BadInputError(
                describe_validation_error(exc, f"'{where}' is not a valid {cls.KIND}") + f"; rerun `{cls.COMMAND}`"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> Self:
        """Read and validate a file written by `save`.

        Raises:
            BadInputError: missing, unreadable, not JSON, or not this kind of result.
        """
        from .files import input_file

        p = Path(path)
        if not p.exists():
            raise BadInputError(f"{cls.KIND} file '{p}' does not exist; run `{cls.COMMAND}` first")
        input_file(p, f"{cls.KIND} file", f"give the path of a {cls.KIND}")
        try:
            data = json.loads(p.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise BadInputError(f"'{p}' is not a {cls.KIND} written by edgetqs ({type(exc).__name__}: {exc})") from None
        except OSError as exc:
            raise BadInputError(f"cannot read '{p}': {exc.strerror}") from None
        return cls.from_json_dict(data, str(p))


def edgetqs_version() -> str:
    from .. import __version__

    return __version__
