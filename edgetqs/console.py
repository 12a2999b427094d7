"""What the command line shows: one ``error:`` line per failure, notes, and progress bars with the time left.

User text (file names, tensor names, messages that quote them) is always printed as plain text, never
read as rich markup: ``[/bold]x.onnx`` is a file name, not a style.

`boundary` is the one error boundary of every command: an `EdgetqsError` (our own, with its advice),
and the failures we anticipate from the libraries underneath (onnxruntime refusing a graph, a truncated
``.npz``, a binary TOML file, an OS error such as a full disk) each become one ``error:`` line and
exit status 2. Anything else is a bug: one line that names a log file holding the traceback
(``--debug`` prints it instead), exit status 2. Ctrl-C ends with status 130 and no traceback.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
import unicodedata
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.text import Text

from .errors import EdgetqsError

err = Console(stderr=True, highlight=False, soft_wrap=True)
out = Console(highlight=False)
DEBUG = {"on": bool(os.environ.get("EDGETQS_DEBUG"))}


class Exit(Exception):
    """Leave the command with this status (after its output was printed)."""

    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def printable(text: str, keep_newlines: bool = False) -> str:
    """``text`` with every control, format or line-separator character written as its escape (``\\x1b``, ``\\u202e``):
    a file name with an escape sequence cannot drive the terminal, and one with a line separator cannot make an
    error two lines."""
    if text.isprintable():
        return text
    out = []
    for ch in text:
        if (ch == "\n" and keep_newlines) or ch == " " or unicodedata.category(ch) not in _UNPRINTABLE:
            out.append(ch)
        else:
            out.append(ch.encode("unicode_escape").decode("ascii"))
    return "".join(out)


_UNPRINTABLE = {"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"}


def note(message: str) -> None:
    err.print(Text.assemble(("note: ", "yellow"), printable(str(message), keep_newlines=True)))


def say(message: str) -> None:
    err.print(Text(printable(str(message), keep_newlines=True)))


def error_line(message: str) -> None:
    first = printable(" ".join(str(message).split("\n")).strip()) or "(no message)"
    if len(first) > 2000:  # a value of thousands of characters quoted in the message: keep the line readable
        first = f"{first[:1000]} ...({len(first) - 1500:,} characters)... {first[-500:]}"
    err.print(Text.assemble(("error: ", "bold red"), first))


def _log_dir() -> Path:
    base = os.environ.get("EDGETQS_CACHE_DIR") or str(Path.home() / ".cache" / "edgetqs")
    return Path(base).expanduser() / "logs"


def _write_log(exc: BaseException) -> Path | None:
    from .core.files import write_text

    try:
        p = _log_dir() / f"error-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}.log"
        text = f"edgetqs {' '.join(sys.argv[1:])}\n\n" + "".join(traceback.format_exception(exc))
        return write_text(p, text, policy="refuse_existing")  # never through a link planted at the name
    except (OSError, EdgetqsError):
        return None


def describe_foreign(exc: BaseException) -> str | None:
    """One line for a failure of a library underneath that a user can act on, or None (a bug)."""
    import zipfile

    mod = type(exc).__module__ or ""
    text = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else type(exc).__name__
    if mod.startswith("onnxruntime"):
        return f"onnxruntime refused the model or its inputs ({type(exc).__name__}): {text}"
    if isinstance(exc, (zipfile.BadZipFile, EOFError)):
        return f"a file is truncated or is not the archive it should be (.npz): {text}"
    if isinstance(exc, UnicodeDecodeError):
        return f"a file that should be text is binary ({text}); check the file names given"
    if isinstance(exc, MemoryError):
        return "out of memory; use fewer contexts (-k), a shorter horizon (-T) or block groups (--granularity block)"
    if isinstance(exc, RecursionError):
        return "the input is nested too deeply to read; check the file"
    if isinstance(exc, OSError):
        where = f" '{exc.filename}'" if getattr(exc, "filename", None) else ""
        return f"{exc.strerror or type(exc).__name__}{where}" + (f" ({text})" if not exc.strerror else "")
    try:
        import tomllib

        if isinstance(exc, tomllib.TOMLDecodeError):
            return f"a TOML file does not parse: {text}"
    except ImportError:  # pragma: no cover
        pass
    return None


@contextmanager
def boundary() -> Iterator[None]:
    """Turn every failure into one line and an exit status (see the module docstring)."""
    try:
        yield
    except Exit:
        raise
    except EdgetqsError as exc:
        error_line(str(exc))
        raise Exit(2) from None
    except KeyboardInterrupt:
        err.print(Text("interrupted", style="red"))
        raise Exit(130) from None
    except Exception as exc:  # noqa: BLE001 - the boundary: nothing escapes as a traceback
        foreign = describe_foreign(exc)
        if foreign is not None:
            error_line(foreign)
            raise Exit(2) from None
        if DEBUG["on"]:
            err.print(Text("".join(traceback.format_exception(exc))))
            error_line(f"unexpected {type(exc).__name__}: {str(exc)[:300]} (an edgetqs bug: please report it with the traceback above)")
            raise Exit(2) from None
        log = _write_log(exc)
        where = f"the traceback is in {log}" if log else "the traceback could not be saved"
        error_line(f"unexpected {type(exc).__name__}: {str(exc)[:300]}; {where} (rerun with --debug to print it; please report it)")
        raise Exit(2) from None


@contextmanager
def progress(label: str, quiet: bool = False) -> Iterator[Callable[[int, int], None]]:
    """A progress bar with elapsed time and time left, fed by ``callback(done, total)``; drawn on stderr at
    the first report and removed at the end (nothing at all with ``quiet`` or when nothing reports)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    state: dict[str, Any] = {}

    def update(done: int, total: int) -> None:
        if quiet:
            return
        if "bar" not in state:
            bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("left"),
                TimeRemainingColumn(),
                console=err,
                transient=True,
            )
            bar.start()
            state["bar"], state["task"] = bar, bar.add_task(escape(label), total=total)
        state["bar"].update(state["task"], completed=done, total=total)

    try:
        yield update
    finally:
        if "bar" in state:
            state["bar"].stop()
