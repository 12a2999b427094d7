"""Error types. Every message names the bad value, what was expected and what to do.

What to do is data where a command line can do it: a `Hint` (options to add, replace or drop, or the
``edgetqs.toml`` keys that say the same for a command without those options). The message reads it
("...; use -k 12 or fewer"), the CLI's boundary renders it for the command that ran, and a test
(``tests/test_hints.py``) follows every hint of the catalogue and checks that the command then gets past
the error.
"""

from __future__ import annotations

import json
import re
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from typing import Any

_FLAG = re.compile(r"^--?[A-Za-z]")


@dataclass(frozen=True)
class Hint:
    """Advice a command line can follow.

    Attributes:
        key: which advice this is (stable: the hint catalogue test lists every key).
        args: options to add, each replacing the same option if given, e.g. ``("--format", "tflite")``
            or ``("--overwrite",)``; a repeatable option appears once per value.
        drop: options to remove (with their values), e.g. ``("--mode",)``.
        say: how the advice reads; ``{args}`` is replaced by the options, quoted for a shell.
        project: the same advice as ``edgetqs.toml`` keys (dotted ``table.key``, value), for a command
            that lacks the options (or for the Python API).
        otherwise: what to say to a command that lacks the options when no project key says the same.
        command: the command the options belong to when it is not the one that failed (``plan`` for a
            convert that needs another plan); the advice then says to rerun that command.
    """

    key: str
    args: tuple[str, ...] = ()
    drop: tuple[str, ...] = ()
    say: str = "rerun with {args}"
    project: tuple[tuple[str, Any], ...] = ()
    otherwise: str = ""
    command: str | None = None

    def flags(self) -> list[str]:
        """Every option the hint adds, replaces or drops."""
        return list(dict.fromkeys([a for a in self.args if _FLAG.match(a)] + list(self.drop)))

    def shell(self) -> str:
        """The options as a shell would take them."""
        import shlex

        added = " ".join(a if _FLAG.match(a) else shlex.quote(a) for a in self.args)
        dropped = f"without {', '.join(self.drop)}" if self.drop else ""
        return " ".join(x for x in (added, dropped) if x)

    def toml(self) -> str:
        """The project-file form, e.g. ``[rollout] mode = "window"``."""
        tables: dict[str, list[str]] = {}
        for dotted, value in self.project:
            table, _, key = dotted.rpartition(".")
            tables.setdefault(table, []).append(f"{key} = {json.dumps(value)}")
        return "; ".join((f"[{t}] " if t else "") + ", ".join(kv) for t, kv in tables.items())

    def text(self, offered: Collection[str] | None = None) -> str:
        """The advice for a command offering the options ``offered`` (None: any command)."""
        if self.command is not None:
            return self.say.replace("{args}", f"`edgetqs {self.command} ... {self.shell()}`")
        if offered is not None and any(f not in offered for f in self.flags()):
            if self.project:
                return f"set {self.toml()} in edgetqs.toml"
            if self.otherwise:
                return self.otherwise
        cli = self.say.replace("{args}", self.shell())
        if offered is None and self.project:
            cli += f" (or set {self.toml()} in edgetqs.toml)"
        return cli

    def follow(self, argv: list[str], aliases: Mapping[str, Collection[str]] | None = None) -> list[str]:
        """``argv`` with this hint followed: replaced and dropped options removed (with their other spellings,
        ``aliases``: option -> every name of it), the new ones appended."""
        gone = {a for f in self.flags() for a in (aliases or {}).get(f, (f,))} | set(self.flags())
        out: list[str] = []
        i = 0
        while i < len(argv):
            a = argv[i]
            name = a.split("=", 1)[0]
            if name in gone:
                i += 1
                if "=" not in a and i < len(argv) and not _FLAG.match(argv[i]):
                    i += 1  # its value
                continue
            out.append(a)
            i += 1
        return out + list(self.args)


class EdgetqsError(Exception):
    """Base class of every error edgetqs raises on purpose (the CLI prints it on one line).

    Args:
        message: what went wrong (the bad value, what was expected) and, unless ``hint`` says it, what to do.
        hint: advice as data; appended to the message when printed.
    """

    def __init__(self, message: str = "", hint: Hint | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.render()

    def render(self, offered: Collection[str] | None = None) -> str:
        """The message with its hint as it applies to a command offering the options ``offered``."""
        return self.message + (f"; {self.hint.text(offered)}" if self.hint is not None else "")

    def __reduce__(self) -> tuple[Any, ...]:  # keeps the hint across worker processes
        return (_rebuild, (type(self), self.message, self.hint))


def _rebuild(cls: type[EdgetqsError], message: str, hint: Hint | None) -> EdgetqsError:
    exc = cls.__new__(cls)
    Exception.__init__(exc, message)
    exc.message, exc.hint = message, hint
    return exc


class BadInputError(EdgetqsError):
    """A file or option given by the user is missing or malformed."""


class BadModelError(EdgetqsError):
    """The model file cannot be used (not ONNX, no float weights, unsupported shapes)."""


class RolloutSpecError(EdgetqsError):
    """How outputs feed back into inputs cannot be inferred or is inconsistent."""


class ContextsError(EdgetqsError):
    """The initial states do not fit the model or the requested number of windows."""


class DivergedRolloutError(EdgetqsError):
    """The float reference rollout itself left the finite numbers."""


class ProjectFileError(EdgetqsError):
    """`edgetqs.toml` has an unknown key or a value of the wrong type."""


class SweepWorkerError(EdgetqsError):
    """The workers of a parallel sweep kept dying (or could not start), so its tasks could not be finished."""


class OptionalDependencyError(EdgetqsError):
    """A feature needs a package from an extra that is not installed."""

    def __init__(self, package: str, extra: str, feature: str) -> None:
        super().__init__(
            f"{feature} needs the package '{package}', which is not installed; install it with: pip install 'edgetqs[{extra}]'"
        )
