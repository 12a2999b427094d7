"""The generated bad-input suite's machinery (issue 12): a workspace, an in-process CLI runner, and bad values
drawn from each option's and each file key's domain.

A *case* is one valid command line (`BASES`) with one option, argument or file key replaced by a value outside
its domain. Each case must end with exit status 2, exactly one ``error:`` line, no traceback, within a time
limit, and with nothing new or changed on disk (the workspace, the score cache and the temporary folder are
listed before and after). `run_case` says which of the outcomes happened:

    clean      exit 2, one error line, nothing written or changed
    traceback  a Python traceback, or the boundary's "unexpected ..." line (a bug)
    hang       no answer within the time limit
    accepted   exit 0 or 1: the bad value was taken (a silent wrong result)
    lost       a file that was there before changed or vanished
    litter     a clean error, but new files were left behind
    unclean    exit 2 without exactly one error line (or another status)

The domains are stated here, apart from the code under test, so a value the code takes but the domain calls
bad shows up as ``accepted``. `check_coverage` fails when a command gains an option (or a config model a
key) that has no domain here.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import math
import os
import re
import shutil
import signal
import stat
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import strategies as st

VARIABLES = tuple(f"v{i}" for i in range(8))
ROWS = 60  # rows of the workspace's record: -k above this cannot fit
TIME_LIMIT_S = 30.0


# ------------------------------------------------------------------------------------------ runner


class _Hang(BaseException):
    """Raised by the alarm: not an Exception, so no error boundary swallows it."""


@dataclass(frozen=True)
class Result:
    rc: int | None
    stdout: str
    stderr: str
    seconds: float
    hung: bool = False

    @property
    def error_lines(self) -> list[str]:
        return [ln for ln in self.stderr.splitlines() if ln.startswith("error:")]


def run_cli(argv: list[str] | tuple[str, ...], cwd: Path, timeout: float = TIME_LIMIT_S) -> Result:
    """Run ``edgetqs ARGV`` in this process (``edgetqs.cli.main`` with sys.argv patched) in ``cwd``, with the
    score cache in ``cwd/.cache`` and temporary files in ``cwd/tmp``; stdout and stderr captured."""
    import edgetqs.cli as cli
    from edgetqs import console

    old_cwd, old_argv, old_tmp = os.getcwd(), sys.argv, tempfile.tempdir
    old_env = {k: os.environ.get(k) for k in ("EDGETQS_CACHE_DIR", "COLUMNS", "EDGETQS_DEBUG")}
    out, err = io.StringIO(), io.StringIO()

    def alarm(signum: int, frame: Any) -> None:
        raise _Hang()

    prev = signal.signal(signal.SIGALRM, alarm)
    t0 = time.perf_counter()
    rc: int | None = None
    hung = False
    try:
        os.chdir(cwd)
        sys.argv = ["edgetqs", *argv]
        os.environ["EDGETQS_CACHE_DIR"] = str(cwd / ".cache")
        os.environ["COLUMNS"] = "200"
        os.environ.pop("EDGETQS_DEBUG", None)
        console.DEBUG["on"] = False
        tempfile.tempdir = str(cwd / "tmp")
        signal.setitimer(signal.ITIMER_REAL, timeout)
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                cli.main()
                rc = 0
            except SystemExit as exc:
                rc = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except _Hang:
        hung = True
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, prev)
        os.chdir(old_cwd)
        sys.argv = old_argv
        tempfile.tempdir = old_tmp
        console.DEBUG["on"] = False
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return Result(rc, out.getvalue(), err.getvalue(), time.perf_counter() - t0, hung)


def run_subprocess(argv: list[str] | tuple[str, ...], cwd: Path, timeout: float = 120.0) -> Result:
    """The same as `run_cli` in a real ``python -m edgetqs.cli`` process."""
    import subprocess

    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "EDGETQS_CACHE_DIR": str(cwd / ".cache"),
        "TMPDIR": str(cwd / "tmp"),
        "COLUMNS": "200",
        "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", ""),
    }
    env.pop("EDGETQS_DEBUG", None)
    t0 = time.perf_counter()
    try:
        r = subprocess.run([sys.executable, "-m", "edgetqs.cli", *argv], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return Result(None, "", "", time.perf_counter() - t0, True)
    return Result(r.returncode, r.stdout, r.stderr, time.perf_counter() - t0)


# ---------------------------------------------------------------------------------------- workspace


NOT_OURS = {"tmp/.ses"}  # onnxruntime's native library writes a session id to $TMPDIR/.ses when it is imported


def snapshot(root: Path) -> dict[str, str]:
    """Every entry under ``root`` (links not followed): relative path -> type and content hash."""
    found: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            if rel in NOT_OURS:
                continue
            try:
                st_ = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st_.st_mode):
                found[rel] = "link:" + os.readlink(p)
            elif stat.S_ISDIR(st_.st_mode):
                found[rel] = "dir"
            elif stat.S_ISREG(st_.st_mode):
                found[rel] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                found[rel] = f"special:{stat.S_IFMT(st_.st_mode)}"
    return found


@dataclass
class Workspace:
    """A folder with a model, a record, and the results of a successful run of every command."""

    root: Path
    artifact: str  # relative path of the converted artifact
    bundle: str  # relative path of the built bundle
    pristine: Path  # a copy to restore from

    def restore(self) -> None:
        shutil.rmtree(self.root)
        shutil.copytree(self.pristine, self.root, symlinks=True)


PROJECT_BASE = {"name": "m", "model": "m.onnx", "contexts": "rec.csv", "k": 3, "score": {"horizon": 4}}
DEVICE_BASES: dict[str, dict[str, Any]] = {
    "local": {"name": "dd", "kind": "local", "description": "the host", "timeout_s": 300.0},
    "qemu": {"name": "qq", "kind": "qemu", "cpu": "cortex-a72", "sysroot": "sysroot", "timeout_s": 300.0},
    "ssh": {
        "name": "ss",
        "kind": "ssh",
        "host": "127.0.0.1",
        "user": "pi",
        "key": "id_test",
        "known_hosts": "known_hosts",
        "port": 2,
        "python": "python3",
        "connect_timeout_s": 2.0,
        "timeout_s": 30.0,
    },
}


def toml_dumps(data: dict[str, Any]) -> str:
    """A small TOML writer (scalars, lists, nested tables) for generated files."""

    def value(v: Any) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, int):
            return str(v)
        if isinstance(v, float):
            return "nan" if math.isnan(v) else ("inf" if v == math.inf else "-inf" if v == -math.inf else repr(v))
        if isinstance(v, str):
            return json.dumps(v, ensure_ascii=False)  # TOML has no surrogate-pair escapes: write the characters
        if isinstance(v, (list, tuple)):
            return "[" + ", ".join(value(x) for x in v) + "]"
        if isinstance(v, dict):
            return "{" + ", ".join(f"{json.dumps(k)} = {value(x)}" for k, x in v.items()) + "}"
        if isinstance(v, RawToml):
            return v.text
        raise TypeError(type(v))

    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    for k, v in data.items():
        if isinstance(v, dict) and not isinstance(v, RawToml):
            tables.append((json.dumps(k), v))
        else:
            lines.append(f"{json.dumps(k)} = {value(v)}")

    def table(prefix: str, d: dict[str, Any]) -> None:
        lines.append(f"\n[{prefix}]")
        sub = []
        for k, v in d.items():
            if isinstance(v, dict) and not isinstance(v, RawToml):
                sub.append((f"{prefix}.{json.dumps(k)}", v))
            else:
                lines.append(f"{json.dumps(k)} = {value(v)}")
        for p, s in sub:
            table(p, s)

    for p, d in tables:
        table(p, d)
    return "\n".join(lines) + "\n"


@dataclass(frozen=True)
class RawToml:
    """A value written into TOML as it is (dates, which JSON has no type for)."""

    text: str


def target_base() -> dict[str, Any]:
    from edgetqs.allocation.targets import find_target

    d = tomllib.loads(Path(find_target("x86-64").path).read_text())
    d["name"] = "tt"
    return d


def build_workspace(root: Path) -> Workspace:
    """Make the workspace (about 20 s): every command is run once, successfully, with the base options."""
    import models
    import pandas as pd

    root.mkdir(parents=True, exist_ok=True)
    (root / "tmp").mkdir()
    (root / ".cache").mkdir()
    models.state_mlp(root / "m.onnx")
    models.state_mlp(root / "other.onnx", seed=1)  # same graph, other weights: scores and plans of m.onnx do not fit it
    data = np.random.default_rng(0).standard_normal((ROWS, 8)).astype(np.float32)
    pd.DataFrame(data, columns=list(VARIABLES)).to_csv(root / "rec.csv", index=False)
    np.save(root / "rec.npy", data)
    (root / "user.txt").write_text("a file of the user's that edgetqs must never touch\n")
    (root / "p.toml").write_text(toml_dumps(PROJECT_BASE))
    (root / "t.toml").write_text(toml_dumps(target_base()))
    (root / "d.toml").write_text(toml_dumps(DEVICE_BASES["local"]))
    (root / "id_test").write_text("not a real key\n")
    (root / "known_hosts").write_text("127.0.0.1 ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n")
    steps = [
        ["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "scores.json"],
        ["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "-q", "-o", "plan.json"],
        ["convert", "m.onnx", "-p", "plan.json", "-f", "ort", "-c", "rec.csv", "-k", "3", "-o", "art"],
        ["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-o", "chk"],
        ["build", "m.onnx", "-t", "x86-64", "-c", "rec.csv", "-k", "3", "-d", "local", "-o", "dist", "--no-refine"],
    ]
    for argv in steps:
        r = run_cli(argv, root, timeout=300)
        assert r.rc in (0, 1) and not r.error_lines, (argv, r.stderr)
    assert (root / "art" / "m.ort.onnx").is_file() and (root / "chk" / "reference.npz").is_file()
    pristine = root.parent / (root.name + "-pristine")
    shutil.copytree(root, pristine, symlinks=True)
    return Workspace(root, "art/m.ort.onnx", "dist/m-x86-64", pristine)


# --------------------------------------------------------------------------------------- cases


@dataclass(frozen=True)
class Bad:
    """One bad value: the text given, and files to create first (relative path -> bytes, or a special marker)."""

    text: str
    files: tuple[tuple[str, Any], ...] = ()
    why: str = ""


FIFO, DIR = object(), object()


@dataclass(frozen=True)
class Link:
    to: str


@dataclass(frozen=True)
class Case:
    where: str  # "score --horizon", "project score.horizon"
    argv: tuple[str, ...]
    files: tuple[tuple[str, Any], ...] = ()
    why: str = ""
    must_mention: str | None = None  # the error line must name this (a file key)

    def __str__(self) -> str:
        made = f" with {[f for f, _ in self.files]}" if self.files else ""
        return f"[{self.where}] edgetqs {' '.join(repr(a) if (not a or ' ' in a) else a for a in self.argv)[:300]}{made} ({self.why})"


@dataclass
class Outcome:
    kind: str
    case: Case
    result: Result
    new: list[str] = field(default_factory=list)
    lost: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        tail = (self.result.stderr.strip().splitlines() or [""])[-1][:300]
        extra = f" new={self.new[:5]}" if self.new else ""
        extra += f" lost={self.lost[:5]}" if self.lost else ""
        return f"{self.kind}: {self.case} -> rc={self.result.rc} {tail!r}{extra}"


KINDS = ("clean", "traceback", "hang", "accepted", "lost", "litter", "unclean")


def _make(root: Path, files: tuple[tuple[str, Any], ...]) -> None:
    for rel, content in files:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if content is FIFO:
            os.mkfifo(p)
        elif content is DIR:
            p.mkdir(exist_ok=True)
        elif isinstance(content, Link):
            os.symlink(content.to, p)
        elif isinstance(content, str):
            p.write_text(content)
        else:
            p.write_bytes(content)


def classify(case: Case, r: Result, before: dict[str, str], after: dict[str, str]) -> Outcome:
    new = sorted(k for k in after if k not in before)
    lost = sorted(k for k in before if after.get(k) != before[k])
    text = r.stdout + r.stderr
    if r.hung:
        kind = "hang"
    elif "Traceback (most recent call last)" in text or any(ln.startswith("error: unexpected ") for ln in r.error_lines):
        kind = "traceback"
    elif lost:
        kind = "lost"
    elif r.rc in (0, 1) and not r.error_lines:
        kind = "accepted"
    elif r.rc == 2 and len(r.error_lines) == 1 and not [ln for ln in r.stderr.splitlines() if ln.strip() and not _benign(ln)]:
        if case.must_mention and case.must_mention not in r.error_lines[0]:
            kind = "unclean"
        else:
            kind = "litter" if new else "clean"
    else:
        kind = "unclean"
    return Outcome(kind, case, r, new, lost)


def _benign(line: str) -> bool:
    """What may accompany the one error line on stderr: the error itself, notes and progress said before it."""
    return line.startswith(("error:", "note:", "      ", "[", "reusing scores from", "checking ", "wrote ", "plot:")) or "shadows" in line


def run_case(ws: Workspace, case: Case, timeout: float = TIME_LIMIT_S, runner: Callable[..., Result] = run_cli) -> Outcome:
    """Create the case's files, run it, compare the listings, and put the workspace back as it was."""
    _make(ws.root, case.files)
    before = snapshot(ws.root)
    r = runner(case.argv, ws.root, timeout=timeout)
    after = snapshot(ws.root)
    o = classify(case, r, before, after)
    if o.new or o.lost or case.files:
        ws.restore()
    return o


# ------------------------------------------------------------------------------------ bad values

MARKUP = ("[/bold]x", "[red]x[/red]", "[link=http://x]y[/link]", "[/]", "[bold", "[foo]")
PATHY = ("../../x", "/", "a/b", "./", "..", "~/x", "x\\y", "$HOME", "%s%n", "{0}", "x;rm -rf y", "x\ny", "\t", " x ")
NUMBERY = ("nan", "NaN", "inf", "-inf", "1e999", "-1e999", "1e-400", "0x10", "1_0", "١٢", "−1", "1,5", "1.5.2", "true", "None")
HUGE = ("9223372036854775807", "9223372036854775808", "18446744073709551616", "1" + "0" * 30, "1" * 400)
JUNK = ("", " ", "abc", "x" * 5000, "é", "\u202e", *MARKUP, *PATHY, *NUMBERY, *HUGE)


def _int(text: str) -> int | None:
    """What a command line reads as an integer, else None: Python's int() of the text, or a float text with an
    integral value (typer reads ``--seed 4.0`` as 4, the same number)."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        f = float(text)
    except ValueError:
        return None
    return int(f) if math.isfinite(f) and f == int(f) and "e" not in text.lower() and "_" not in text else None


def _float(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def junk_text() -> st.SearchStrategy[str]:
    return st.one_of(
        st.sampled_from(JUNK),
        st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=40),
        st.integers(min_value=-(10**40), max_value=10**40).map(str),
        st.floats(allow_nan=True, allow_infinity=True).map(repr),
    )


class Domain:
    """The values an option or key accepts; ``bad()`` draws values outside it."""

    def ok(self, text: str) -> bool:  # a text in the domain (never generated as bad)
        return False

    def examples(self) -> list[Bad]:
        """A fixed handful of bad values (the default run's slice)."""
        return [Bad(t) for t in ("", "abc", "nan", "[/bold]x", "../../x", "x" * 5000) if not self.ok(t)]

    def bad(self) -> st.SearchStrategy[Bad]:
        return junk_text().filter(lambda t: not self.ok(t)).map(Bad)


class Flag(Domain):
    """A boolean flag: the only bad use is giving it a value (``--force=yes``)."""

    def examples(self) -> list[Bad]:
        return [Bad("=yes"), Bad("=[/bold]")]

    def bad(self) -> st.SearchStrategy[Bad]:
        return junk_text().map(lambda t: Bad("=" + t))


@dataclass
class IntRange(Domain):
    lo: int
    hi: int | None = None

    def ok(self, text: str) -> bool:
        v = _int(text)
        return v is not None and v >= self.lo and (self.hi is None or v <= self.hi)

    def examples(self) -> list[Bad]:
        vals = [str(self.lo - 1), str(-(10**12)), "2.5", "nan", "", "x", HUGE[2]]
        if self.hi is not None:
            vals += [str(self.hi + 1), str(10**12)]
        return [Bad(v) for v in vals if not self.ok(v)]

    def bad(self) -> st.SearchStrategy[Bad]:
        edge = [st.integers(max_value=self.lo - 1).map(str)]
        if self.hi is not None:
            edge.append(st.integers(min_value=self.hi + 1).map(str))
        return st.one_of(*edge, junk_text()).filter(lambda t: not self.ok(t)).map(Bad)


@dataclass
class FloatRange(Domain):
    lo: float
    hi: float
    lo_open: bool = False

    def ok(self, text: str) -> bool:
        v = _float(text)
        return v is not None and math.isfinite(v) and (v > self.lo if self.lo_open else v >= self.lo) and v <= self.hi

    def examples(self) -> list[Bad]:
        vals = ["nan", "inf", "-inf", "-1", str(self.hi * 2 + 1), "", "x", "1e999"]
        if self.lo_open:
            vals.append(str(self.lo))
        return [Bad(v) for v in vals if not self.ok(v)]

    def bad(self) -> st.SearchStrategy[Bad]:
        return (
            st.one_of(
                st.floats(allow_nan=True, allow_infinity=True).map(repr),
                st.floats(min_value=self.hi, exclude_min=True).map(repr),
                junk_text(),
            )
            .filter(lambda t: not self.ok(t))
            .map(Bad)
        )


@dataclass
class Choice(Domain):
    values: tuple[str, ...]

    def ok(self, text: str) -> bool:
        return text in self.values

    def examples(self) -> list[Bad]:
        return [Bad(v) for v in ("", "abc", self.values[0].upper(), self.values[0] + " ", "[/bold]x", "../x") if not self.ok(v)]


@dataclass
class Predicate(Domain):
    """A text domain given by a function (spans, sizes, slices...) and a list of typical bad values."""

    accepts: Callable[[str], bool]
    typical: tuple[str, ...] = ()

    def ok(self, text: str) -> bool:
        try:
            return bool(self.accepts(text))
        except Exception:  # a predicate that cannot parse the text says no
            return False

    def examples(self) -> list[Bad]:
        return [Bad(v) for v in (*self.typical, "", "[/bold]x", "x" * 5000) if not self.ok(v)]

    def bad(self) -> st.SearchStrategy[Bad]:
        return st.one_of(st.sampled_from(self.typical or ("x",)), junk_text()).filter(lambda t: not self.ok(t)).map(Bad)


@dataclass
class Name(Domain):
    """A target or device name (or the path of a file); ``known`` are the valid ones."""

    known: tuple[str, ...]

    def ok(self, text: str) -> bool:
        return text in self.known

    def examples(self) -> list[Bad]:
        return [Bad(v) for v in ("nosuch", "", "[/]", "[/bold]x", "../../etc/passwd", "a/b", "x.toml", "user.txt", ".", "..")]


def _truncations(data: bytes, n: int = 3) -> list[bytes]:
    return [data[: len(data) * (i + 1) // (n + 1)] for i in range(n)]


@dataclass
class InFile(Domain):
    """An input file of ``kind``; ``wrong`` are workspace files of other kinds, ``valid`` the workspace's good one."""

    kind: str
    valid: str
    wrong: tuple[str, ...]
    variants: Callable[[Path], list[Bad]] | None = None  # bad files of this kind made from the valid one
    empty_ok: bool = False  # an empty file is a valid one (a project file with every default)
    valid_content: Callable[[bytes], bool] | None = None  # generated contents that happen to be a valid file

    def _base(self, root: Path | None) -> list[Bad]:
        out = [
            Bad("nope/missing.x", why="missing"),
            Bad("art", why="a folder"),
            Bad("/dev/null", why="a character device"),
            Bad("/dev/zero", why="an endless device"),
            Bad("in/fifo", (("in/fifo", FIFO),), "a fifo"),
            *(() if self.empty_ok else (Bad("in/empty", (("in/empty", b""),), "empty"),)),
            Bad("in/loop", (("in/loop", Link("loop")),), "a link loop"),
            Bad("in/dangling", (("in/dangling", Link("nowhere")),), "a dangling link"),
            Bad("[/bold]x", why="markup"),
            *(Bad(w, why="another kind of file") for w in self.wrong),
        ]
        if root is not None and self.variants:
            out += self.variants(root)
        return out

    def examples(self) -> list[Bad]:
        return self._base(WS_ROOT[0] if WS_ROOT else None)

    def bad(self) -> st.SearchStrategy[Bad]:
        root = WS_ROOT[0] if WS_ROOT else None
        suffix = Path(self.valid).suffix
        valid = self.valid_content or (lambda b: False)
        made = st.one_of(
            st.binary(max_size=300)
            .filter(lambda b: not valid(b))
            .map(lambda b: Bad(f"in/junk{suffix}", ((f"in/junk{suffix}", b),), "random bytes")),
            st.text(max_size=200)
            .filter(lambda t: not valid(t.encode()))
            .map(lambda t: Bad(f"in/text{suffix}", ((f"in/text{suffix}", t),), "random text")),
        )
        if root is not None:
            data = (root / self.valid).read_bytes()
            made = st.one_of(
                made,
                st.integers(0, max(len(data) - 1, 0))
                .filter(lambda n: not valid(data[:n]))
                .map(lambda n: Bad(f"in/cut{suffix}", ((f"in/cut{suffix}", data[:n]),), f"truncated at {n}")),
            )
        return st.one_of(st.sampled_from(self._base(root)), made)


class OutFile(Domain):
    """An output file: anything that is not a new name or a previous result of the same kind."""

    def examples(self) -> list[Bad]:
        return [
            Bad("art", why="a folder"),
            Bad(".", why="the current folder"),
            Bad("/dev/null", why="a character device"),
            Bad("/dev/full", why="a full device"),
            Bad("in/fifo", (("in/fifo", FIFO),), "a fifo"),
            Bad("user.txt", why="a user's file"),
            Bad("in/link", (("in/link", Link("../user.txt")),), "a link to a user's file"),
            Bad("in/dangling", (("in/dangling", Link("../elsewhere.txt")),), "a dangling link"),
            Bad("user.txt/x", why="under a file"),
            Bad("/dev/null/x", why="under a device"),
            Bad("x" * 300, why="a name too long"),
            Bad("/proc/edgetqs-x", why="a read-only system folder"),
        ]

    def bad(self) -> st.SearchStrategy[Bad]:
        return st.sampled_from(self.examples())


class OutDir(Domain):
    """An output folder: not a file, a device, a fifo or a path under a file."""

    def examples(self) -> list[Bad]:
        return [
            Bad("user.txt", why="a user's file"),
            Bad("/dev/null", why="a character device"),
            Bad("in/fifo", (("in/fifo", FIFO),), "a fifo"),
            Bad("user.txt/sub", why="under a file"),
            Bad("/dev/null/x", why="under a device"),
            Bad("in/link", (("in/link", Link("../user.txt")),), "a link to a file"),
            Bad("x" * 300, why="a name too long"),
            Bad("/proc/edgetqs-x", why="a read-only system folder"),
        ]

    def bad(self) -> st.SearchStrategy[Bad]:
        return st.sampled_from(self.examples())


WS_ROOT: list[Path] = []  # the workspace, once built: InFile draws its truncated copies from it


# ------------------------------------------------------------------------ what is valid, per option


def _span_ok(text: str) -> bool:
    a, b = text.split(":")
    lo, hi = float(a) if a.strip() else 0.0, float(b) if b.strip() else 1.0
    return 0 <= lo < hi <= 1 and math.floor(hi * ROWS) - math.floor(lo * ROWS) >= 3


_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|KiB|MB|MiB|GB|GiB)?\s*$", re.IGNORECASE)


def _size_ok(text: str) -> bool:
    m = _SIZE_RE.match(text)
    if not m:
        return False
    unit = (m.group(2) or "b").lower()
    n = float(m.group(1)) * {"b": 1, "kb": 1e3, "kib": 1024, "mb": 1e6, "mib": 2**20, "gb": 1e9, "gib": 2**30}[unit]
    return 1 <= n <= 2**50


def _slice_ok(text: str) -> bool:
    from edgetqs.core.rollout import parse_slice

    return np.empty((7, 8))[parse_slice(text)].shape == (7, 8)


def _ladder_ok(text: str) -> bool:
    parts = text.split(",")
    return bool(parts) and all(p.strip() and 2 <= int(p) <= 8 for p in parts)


def _horizon_ok(text: str) -> bool:
    return text == "auto" or (_int(text) is not None and 1 <= int(text) <= 10_000)


def _precision_ok(text: str) -> bool:
    return re.fullmatch(r"fp32|fp16|int(?:[2-8]|16)(?:-(?:tensor|channel|block\d+))?", text) is not None


def _variables_ok(text: str) -> bool:
    names = [v.strip() for v in text.split(",")]
    return sorted(names) == sorted(VARIABLES) and len(set(names)) == len(names)


def _json_variants(valid: str, keys: tuple[str, ...]) -> Callable[[Path], list[Bad]]:
    """Broken copies of a result file: not JSON, another shape, and each of ``keys`` (the ones its reader relies
    on; the others are provenance, free text) set to a value of another type."""

    def make(root: Path) -> list[Bad]:
        good = json.loads((root / valid).read_text())
        out = [
            Bad("in/x.json", (("in/x.json", t),), f"JSON {t[:20]}") for t in ("[]", "null", "{}", '"x"', "1", "{", '{"schema_version": 99}')
        ]
        for key in keys:
            for v in (None, "x", [], {}, -1):
                bad = {**good, key: v}
                if bad != good:
                    out.append(Bad("in/x.json", (("in/x.json", json.dumps(bad)),), f"{key} = {v!r}"))
        out += [Bad("in/x.json", (("in/x.json", t),), "truncated") for t in _truncations((root / valid).read_bytes())]
        return out

    return make


def _contexts_variants(root: Path) -> list[Bad]:
    import pandas as pd

    data = np.load(root / "rec.npy")

    def npy(name: str, a: np.ndarray, why: str) -> Bad:
        buf = io.BytesIO()
        np.save(buf, a, allow_pickle=a.dtype == object)
        return Bad(f"in/{name}.npy", ((f"in/{name}.npy", buf.getvalue()),), why)

    def npz(name: str, why: str, **arrays: np.ndarray) -> Bad:
        buf = io.BytesIO()
        np.savez(buf, **arrays)
        return Bad(f"in/{name}.npz", ((f"in/{name}.npz", buf.getvalue()),), why)

    nan, inf = data.copy(), data.copy()  # row 5 of nan, row 7 of inf
    nan[5, 2] = np.nan
    inf[7, 1] = -np.inf
    df = pd.DataFrame(data, columns=list(VARIABLES))
    df.iloc[5, 2] = np.nan
    csv_nan = df.to_csv(index=False)
    csv_inf = pd.DataFrame(inf, columns=list(VARIABLES)).to_csv(index=False)
    return [
        npy("nan", nan, "a NaN"),
        npy("inf", inf, "an Inf"),
        npy("empty", np.zeros((0, 8), np.float32), "no rows"),
        npy("scalar", np.array(1.0, np.float32), "a scalar"),
        npy("strings", np.array(["a", "b"]), "strings"),
        npy("complex", data.astype(np.complex64), "complex numbers"),
        npy("object", np.array([{"a": 1}], dtype=object), "a pickle"),
        npy("shape", data[:, :5], "5 variables, not 8"),
        npy("short", data[:2], "2 rows for 3 contexts"),
        npz("empty", "no arrays"),
        npz("nanctx", "premade contexts with NaN", contexts=nan[3:7]),
        npz("two", "two unnamed arrays", a=data, b=data),
        npz("vars", "9 names for 8 variables", record=data, variables=np.array([*VARIABLES, "v8"])),
        Bad("in/nan.csv", (("in/nan.csv", csv_nan),), "a NaN cell"),
        Bad("in/inf.csv", (("in/inf.csv", csv_inf),), "an -inf cell"),
        Bad("in/text.csv", (("in/text.csv", "a,b\nx,y\n"),), "no numeric column"),
        Bad("in/x.parquet", (("in/x.parquet", b"PAR1"),), "an unknown suffix"),
        *(Bad("in/cut.npz", (("in/cut.npz", t),), "truncated npz") for t in _truncations(_npz_bytes(data))),
    ]


def _npz_bytes(data: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, record=data)
    return buf.getvalue()


def _reference_variants(root: Path) -> list[Bad]:
    raw = (root / "chk" / "reference.npz").read_bytes()
    with np.load(root / "chk" / "reference.npz") as z:
        arrays = {k: z[k] for k in z.files}
    out = [Bad("in/cut.npz", (("in/cut.npz", t),), "truncated") for t in _truncations(raw)]
    for key in arrays:
        changed = dict(arrays)
        if key == "meta":
            changed[key] = np.array("{}")
        else:
            a = arrays[key].astype(np.float32).copy()
            a.flat[0] = np.inf if key.startswith("truth__") else np.nan  # truth is NaN where the record ended
            changed[key] = a
        buf = io.BytesIO()
        np.savez(buf, **changed)
        out.append(Bad("in/ref.npz", (("in/ref.npz", buf.getvalue()),), f"{key} tampered"))
    return out


def _toml_variants(root: Path) -> list[Bad]:
    return [
        Bad("in/x.toml", (("in/x.toml", t),), why)
        for t, why in (
            (b"\xff\xfe\x00binary", "binary"),
            ("[foo]\n", "unknown table"),
            ("[[x]]\n", "array of tables"),
            ("a = \n", "no value"),
            ("model = 'm.onnx'\nmodel = 'm.onnx'\n", "a key twice"),
            ("[/bold]x = 1\n", "markup"),
        )
    ]


def _onnx_variants(root: Path) -> list[Bad]:
    return [Bad("in/cut.onnx", (("in/cut.onnx", t),), "truncated") for t in _truncations((root / "m.onnx").read_bytes())]


def _scored_onnx_variants(root: Path) -> list[Bad]:
    return [*_onnx_variants(root), Bad("other.onnx", why="another model than the one scored")]


def _artifact_variants(root: Path) -> list[Bad]:
    raw = (root / "art" / "m.ort.onnx").read_bytes()
    return [Bad("in/cut.ort.onnx", (("in/cut.ort.onnx", t),), "truncated") for t in _truncations(raw)] + [
        Bad("in/x.tflite", (("in/x.tflite", b"TFL3" + bytes(64)),), "a broken tflite"),
        Bad("chk", why="a folder without a manifest"),
    ]


TARGETS = ("x86-64", "raspberrypi", "raspberrypi-zero2w", "stm32h743", "esp32s3", "nrf52840")
MODEL = InFile("model", "m.onnx", ("rec.csv", "scores.json", "user.txt"), _onnx_variants)
SCORED_MODEL = InFile("model", "m.onnx", ("rec.csv", "scores.json", "user.txt"), _scored_onnx_variants)  # plan, convert, check
# truncated copies of the .npy (a CSV cut between two rows, or inside the last number, is a valid shorter record)
CONTEXTS = InFile("contexts", "rec.npy", ("m.onnx", "scores.json", "user.txt"), _contexts_variants)


def _valid_project(data: bytes) -> bool:
    """Contents that are a valid project file after all: blanks and comments (every setting at its default), or a
    truncated copy that still ends between two whole lines of the workspace's project file."""
    try:
        parsed = tomllib.loads(data.decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        return False
    flat = json.dumps(PROJECT_BASE, sort_keys=True)
    return parsed == {} or all(json.dumps({k: v}, sort_keys=True)[1:-1] in flat for k, v in parsed.items() if not isinstance(v, dict))


PROJECT = InFile("project", "p.toml", ("m.onnx", "rec.csv", "scores.json"), _toml_variants, empty_ok=True, valid_content=_valid_project)
SCORES = InFile(
    "scores",
    "scores.json",
    ("plan.json", "rec.csv", "m.onnx"),
    _json_variants("scores.json", ("schema_version", "model_sha256", "rollout", "horizon", "groups", "state_exponent", "contexts")),
)
PLAN = InFile(
    "plan",
    "plan.json",
    ("scores.json", "rec.csv", "m.onnx"),
    _json_variants("plan.json", ("schema_version", "model_sha256", "runtime", "budget_bytes", "tensors", "horizon")),
)
REFERENCE = InFile("reference", "chk/reference.npz", ("rec.npy", "m.onnx", "scores.json"), _reference_variants)
ARTIFACT = InFile("artifact", "art/m.ort.onnx", ("rec.csv", "user.txt", "scores.json"), _artifact_variants)
K = IntRange(1, ROWS)
SPAN = Predicate(_span_ok, ("1:0", "0:2", "nan:1", "-1:0.5", "0:0", "::", "0.5", "a:b", "0:0.01", "inf:1", "0:nan"))
FILL = Choice(("ffill", "interpolate", "mean"))
PICK = Choice(("even", "random"))
HORIZON = IntRange(1, 10_000)
SIZE = Predicate(_size_ok, ("0", "-5", "1e30", "nanKB", "infMB", "10 XB", "1.5.2KB", "0.1", "9" * 30, "0KB", "-1MiB"))
# --reserve: a size, or 0 (nothing kept unspent)
RESERVE = Predicate(lambda t: t.strip() == "0" or _size_ok(t), ("-5", "1e30", "nanKB", "infMB", "10 XB", "0.1", "9" * 30, "-1MiB"))

# the valid command line each option is tried in (one value of it replaced or added)
BASES: dict[str, list[str]] = {
    "score": ["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "out/s.json"],
    "plan": ["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "-q", "-o", "out/p.json"],
    "convert": ["convert", "m.onnx", "-p", "plan.json", "-f", "ort", "-c", "rec.csv", "-k", "3", "-o", "out/art"],
    "check": ["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-o", "out/chk"],
    "build": ["build", "m.onnx", "-t", "x86-64", "-c", "rec.csv", "-k", "3", "-d", "local", "-o", "out/dist", "--no-refine"],
    "init": ["init", "out/proj", "-e", "lorenz96"],
    "devices": ["devices"],
    "targets": ["targets"],
    "examples": ["examples"],
}


@dataclass
class Spec:
    domain: Domain
    base: list[str] | None = None  # another valid command line for this option


# --forcing: the workspace's model (x -> y) has no input to force, so every declaration is bad
FORCING = Predicate(
    lambda t: False,
    ("tod", "x=hour_of_day", "nosuch=hour_of_day", "x=column:v0", "=", "x=hour@predicted", "x=column:", "x=solar_elevation"),
)
# --include / --exclude: an exact tensor name or re:REGEX; each must match a float initializer of the model
RULE = Predicate(lambda t: False, ("re:", "re:([", "nosuch.tensor", "re:^zzz$", " "))

# (command, parameter name) -> its domain; a positional argument is replaced, an option replaced or added
OPTIONS: dict[tuple[str, str], Spec] = {
    ("*", "debug"): Spec(Flag()),
    # score
    ("score", "model"): Spec(MODEL),
    ("score", "contexts"): Spec(CONTEXTS),
    ("score", "variables"): Spec(Predicate(_variables_ok, (",", "nosuch", "v0,v0", "v0", ",".join(VARIABLES) + ",v8", "v0,,v1"))),
    ("score", "k"): Spec(K),
    ("score", "span"): Spec(SPAN),
    ("score", "pick"): Spec(PICK),
    ("score", "spinup"): Spec(Flag()),
    ("score", "spinup_scale"): Spec(
        FloatRange(0.0, 1e6, lo_open=True), ["score", "m.onnx", "--spinup", "-k", "3", "-T", "4", "-q", "-o", "out/s.json"]
    ),
    ("score", "mode"): Spec(Choice(("state",))),
    ("score", "state"): Spec(Predicate(lambda t: t == "x=y", ("x", "=", "x=", "=y", "y=x", "x=nosuch", "nosuch=y", "x=y=z"))),
    ("score", "increment"): Spec(Flag()),
    ("score", "static"): Spec(Choice(("never",))),
    ("score", "output_slice"): Spec(Predicate(_slice_ok, ("((((", "99", "...,99", "0", "1:0", "...,...", "a", "0:1:2", ":,:,:"))),
    ("score", "channel_axis"): Spec(Predicate(lambda t: _int(t) in (1, -1), ("0", "7", "-2", "-9"))),
    ("score", "forcing"): Spec(FORCING),
    ("score", "latitude"): Spec(FloatRange(-90.0, 90.0)),
    ("score", "longitude"): Spec(FloatRange(-180.0, 180.0)),
    ("score", "probe"): Spec(Choice(("gauss", "quant"))),
    ("score", "granularity"): Spec(Choice(("tensor", "block"))),
    ("score", "block_depth"): Spec(IntRange(1)),
    ("score", "horizon"): Spec(Predicate(_horizon_ok, ("0", "-3", "10001", "1000000000", "auto ", "AUTO", "1.5"))),
    ("score", "max_horizon"): Spec(HORIZON),
    ("score", "scale"): Spec(FloatRange(0.0, 1.0, lo_open=True)),
    ("score", "bits"): Spec(IntRange(2, 8)),
    ("score", "ladder"): Spec(Predicate(_ladder_ok, ("99", "1", ",", "4,,5", "4,x", "0"))),
    ("score", "seed"): Spec(IntRange(0, 2**63 - 1)),
    ("score", "workers"): Spec(IntRange(0, 1024)),
    ("score", "backend"): Spec(Choice(("serial", "processes"))),
    ("score", "address"): Spec(Predicate(lambda t: False, ("", "-x", "nosuch:1", "[", "ray://", "a b"))),
    ("score", "strategy"): Spec(Choice(("auto", "feed", "rebuild"))),
    ("score", "force"): Spec(Flag()),
    ("score", "output"): Spec(OutFile()),
    ("score", "plot"): Spec(OutFile()),
    ("score", "top"): Spec(IntRange(0)),
    ("score", "fill"): Spec(FILL),
    ("score", "include"): Spec(RULE),
    ("score", "exclude"): Spec(RULE),
    ("score", "project"): Spec(PROJECT),
    ("score", "quiet"): Spec(Flag()),
    # plan
    ("plan", "scores_file"): Spec(SCORES),
    ("plan", "target"): Spec(Name(TARGETS)),
    ("plan", "model"): Spec(SCORED_MODEL),
    ("plan", "runtime"): Spec(Choice(("ort",))),
    ("plan", "budget"): Spec(SIZE),
    ("plan", "reserve"): Spec(RESERVE),
    ("plan", "ratio"): Spec(FloatRange(0.0, 1.0, lo_open=True)),
    ("plan", "objective"): Spec(Choice(("gain", "paper"))),
    ("plan", "allocator"): Spec(Choice(("exact", "greedy"))),
    ("plan", "rounding"): Spec(Choice(("rtn", "gptq"))),
    ("plan", "keep_fp32"): Spec(FloatRange(0.0, 1.0)),
    ("plan", "lowest"): Spec(Predicate(_precision_ok, ("int99", "int1", "fp8", "int4-block0", "int4-blockx"))),
    ("plan", "pin"): Spec(
        Predicate(
            lambda t: False, ("nosuch=int8-channel", "l1.weight=int99", "l1.weight", "re:[=int8-channel", "re:^zzz$=int8-channel", "=fp32")
        )
    ),
    ("plan", "pareto_n"): Spec(IntRange(2, 1000)),
    ("plan", "include"): Spec(RULE),
    ("plan", "exclude"): Spec(RULE),
    ("plan", "activations"): Spec(Choice(("auto",))),
    ("plan", "evaluate"): Spec(Flag()),
    ("plan", "refine"): Spec(Flag()),
    ("plan", "refine_rollouts"): Spec(IntRange(1, 1_000_000)),
    ("plan", "contexts"): Spec(CONTEXTS, BASES["plan"] + ["--evaluate"]),
    ("plan", "k"): Spec(K, BASES["plan"] + ["--evaluate", "-c", "rec.csv"]),
    ("plan", "span"): Spec(SPAN, BASES["plan"] + ["--evaluate", "-c", "rec.csv", "-k", "3"]),
    ("plan", "pick"): Spec(PICK, BASES["plan"] + ["--evaluate", "-c", "rec.csv", "-k", "3"]),
    ("plan", "fill"): Spec(FILL, BASES["plan"] + ["--evaluate", "-c", "rec.csv", "-k", "3"]),
    ("plan", "output"): Spec(OutFile()),
    ("plan", "plot"): Spec(OutFile(), BASES["plan"] + ["--pareto", "3"]),
    ("plan", "project"): Spec(PROJECT),
    ("plan", "quiet"): Spec(Flag()),
    # convert
    ("convert", "model"): Spec(SCORED_MODEL),
    ("convert", "plan_file"): Spec(PLAN),
    ("convert", "fmt"): Spec(Choice(("ort", "ort-mobile"))),
    ("convert", "output"): Spec(OutDir()),
    ("convert", "contexts"): Spec(CONTEXTS),
    ("convert", "k"): Spec(K),
    ("convert", "span"): Spec(SPAN),
    ("convert", "pick"): Spec(PICK),
    ("convert", "horizon"): Spec(HORIZON),
    ("convert", "overwrite"): Spec(Flag()),
    ("convert", "activations"): Spec(Choice(("auto",))),
    # a normalised RMSE above 0; inf (every activation int8) is allowed
    ("convert", "activation_goal"): Spec(
        Predicate(lambda t: (v := _float(t)) is not None and not math.isnan(v) and v > 0, ("0", "-1", "nan", "-inf", "x", "", "-0.0"))
    ),
    ("convert", "fill"): Spec(FILL),
    ("convert", "project"): Spec(PROJECT),
    # check
    ("check", "artifact"): Spec(ARTIFACT),
    ("check", "device"): Spec(Name(("local",))),
    ("check", "model"): Spec(SCORED_MODEL),
    ("check", "reference"): Spec(REFERENCE, ["check", "art/m.ort.onnx", "-r", "chk/reference.npz", "-o", "out/chk"]),
    ("check", "contexts"): Spec(CONTEXTS),
    ("check", "k"): Spec(K),
    ("check", "span"): Spec(SPAN),
    ("check", "pick"): Spec(PICK),
    ("check", "horizon"): Spec(HORIZON),
    ("check", "target"): Spec(Name(TARGETS)),
    ("check", "tolerance"): Spec(FloatRange(0.0, 100.0, lo_open=True)),
    ("check", "fmt"): Spec(Choice(("ort",))),
    ("check", "output"): Spec(OutDir()),
    ("check", "fill"): Spec(FILL),
    ("check", "project"): Spec(PROJECT),
    # build
    ("build", "model"): Spec(MODEL),
    ("build", "target"): Spec(Name(("x86-64", "raspberrypi", "raspberrypi-zero2w"))),
    ("build", "device"): Spec(Name(("local",))),
    ("build", "budget"): Spec(SIZE),
    ("build", "reserve"): Spec(RESERVE),
    ("build", "ratio"): Spec(FloatRange(0.0, 1.0, lo_open=True)),
    ("build", "fmt"): Spec(Choice(("ort", "ort-mobile"))),
    ("build", "activations"): Spec(Choice(("auto",))),
    ("build", "rounding"): Spec(Choice(("rtn", "gptq"))),
    ("build", "output"): Spec(OutDir()),
    ("build", "force"): Spec(Flag()),
    ("build", "refine"): Spec(Flag()),
    ("build", "refine_rollouts"): Spec(IntRange(1, 1_000_000)),
    ("build", "k"): Spec(K),
    ("build", "groups"): Spec(Choice(("tensor", "block"))),
    ("build", "include"): Spec(RULE),
    ("build", "exclude"): Spec(RULE),
    ("build", "contexts"): Spec(CONTEXTS),
    ("build", "span"): Spec(SPAN),
    ("build", "pick"): Spec(PICK),
    ("build", "fill"): Spec(FILL),
    ("build", "project"): Spec(PROJECT),
    # init
    ("init", "directory"): Spec(OutDir()),
    ("init", "example"): Spec(Choice(("lorenz96", "station", "blizzard"))),
    ("init", "overwrite"): Spec(Flag()),
}


def parameters() -> dict[str, list[Any]]:
    """Every command's click parameters (and the global ones under ``*``)."""
    import typer

    from edgetqs.cli import app

    group = typer.main.get_command(app)
    out: dict[str, list[Any]] = {"*": list(group.params)}
    for name, cmd in group.commands.items():  # type: ignore[attr-defined]
        out[name] = list(cmd.params)
    return out


def check_coverage() -> list[str]:
    """Parameters without a domain here, and domains of parameters that no longer exist."""
    params = parameters()
    have = {(c, p.name) for c, ps in params.items() for p in ps}
    missing = sorted(f"{c} {n}" for c, n in have - set(OPTIONS))
    stale = sorted(f"{c} {n}" for c, n in set(OPTIONS) - have)
    return [f"no domain for {m}" for m in missing] + [f"domain for a parameter that is gone: {s}" for s in stale]


def _opt_names(command: str, name: str) -> tuple[list[str], bool, bool]:
    """(its option strings, whether it is positional, whether it is a flag)."""
    for p in parameters()[command]:
        if p.name == name:
            positional = not getattr(p, "opts", [None])[0].startswith("-")
            return list(p.opts), positional, bool(getattr(p, "is_flag", False))
    raise KeyError((command, name))


def option_case(command: str, name: str, bad: Bad) -> Case:
    """The command line of ``command`` with ``name`` set to ``bad``."""
    spec = OPTIONS[(command, name)]
    base = list(spec.base or BASES["score" if command == "*" else command])
    opts, positional, flag = _opt_names(command, name)
    if command == "*":  # a global option goes before the command
        return Case(f"--{name}", ("--" + name + bad.text, *base), bad.files, bad.why)
    if positional:
        # the first positional after the command name is the one to replace
        idx = 1
        argv = base[:idx] + [bad.text] + base[idx + 1 :]
        return Case(f"{command} {name.upper()}", tuple(argv), bad.files, bad.why)
    if flag:
        long = next(o for o in opts if o.startswith("--"))
        argv = [a for a in base if a not in opts and a != "--no-" + long[2:]] + [long + bad.text]
        return Case(f"{command} {long}", tuple(argv), bad.files, bad.why)
    argv = list(base)
    for i, a in enumerate(argv):
        if a in opts and i + 1 < len(argv):
            argv[i + 1] = bad.text
            break
    else:
        argv += [opts[0], bad.text]
    return Case(f"{command} {opts[0]}", tuple(argv), bad.files, bad.why)


def option_examples() -> Iterator[Case]:
    """Every option's fixed bad examples (the default run)."""
    for (command, name), spec in OPTIONS.items():
        for bad in spec.domain.examples():
            yield option_case(command, name, bad)


def option_cases() -> st.SearchStrategy[Case]:
    """Generated: any option of any command, any value outside its domain."""
    keys = sorted(OPTIONS)
    return st.sampled_from(keys).flatmap(lambda key: OPTIONS[key].domain.bad().map(lambda b, key=key: option_case(key[0], key[1], b)))


# ------------------------------------------------------------------------------------- file keys


@dataclass
class KeySpec:
    domain: Domain | None  # None: free text (any string is fine; only other types are bad)
    type: str  # "str", "int", "float", "bool", "list[str]", "list[int]", "table"


def _key_specs() -> dict[str, dict[str, KeySpec]]:
    prec_list = KeySpec(Predicate(lambda t: False, ()), "list[str]")
    score = {
        "score.probe": KeySpec(Choice(("gauss", "quant")), "str"),
        "score.granularity": KeySpec(Choice(("tensor", "block")), "str"),
        "score.block_depth": KeySpec(IntRange(1), "int"),
        "score.horizon": KeySpec(Predicate(_horizon_ok), "int"),
        "score.max_horizon": KeySpec(HORIZON, "int"),
        "score.seed": KeySpec(IntRange(0, 2**63 - 1), "int"),
        "score.scale": KeySpec(FloatRange(0.0, 1.0, lo_open=True), "float"),
        "score.bits": KeySpec(IntRange(2, 8), "int"),
        "score.workers": KeySpec(IntRange(0, 1024), "int"),
        "score.backend": KeySpec(Choice(("serial", "processes")), "str"),
        "score.address": KeySpec(None, "str"),
        "score.eps": KeySpec(Choice(("relative", "absolute")), "str"),
        "score.ladder": KeySpec(Predicate(_ladder_ok), "list[int]"),
        "score.include": KeySpec(RULE, "list[str]"),
        "score.exclude": KeySpec(RULE, "list[str]"),
    }
    return {
        "project": {
            "name": KeySpec(Predicate(lambda t: re.fullmatch(r"[A-Za-z0-9._-]+", t) is not None and t not in (".", "..")), "str"),
            "model": KeySpec(Choice(("m.onnx",)), "str"),
            "contexts": KeySpec(Choice(("rec.csv", "rec.npy")), "str"),
            "variables": KeySpec(Predicate(_variables_ok), "list[str]"),
            "k": KeySpec(K, "int"),
            "fill": KeySpec(FILL, "str"),
            "pick": KeySpec(PICK, "str"),
            "rollout.mode": KeySpec(Choice(("state",)), "str"),
            "rollout.state": KeySpec(Predicate(lambda t: t == "x=y"), "list[str]"),
            "rollout.increment": KeySpec(None, "bool"),
            "rollout.static": KeySpec(Choice(("never",)), "list[str]"),
            "rollout.output_slice": KeySpec(Predicate(_slice_ok), "str"),
            "rollout.channel_axis": KeySpec(Predicate(lambda t: _int(t) in (1, -1)), "int"),
            "rollout.forcing": KeySpec(FORCING, "list[str]"),
            "rollout.latitude": KeySpec(FloatRange(-90.0, 90.0), "float"),
            "rollout.longitude": KeySpec(FloatRange(-180.0, 180.0), "float"),
            **score,
        },
        "target": {
            "name": KeySpec(Predicate(lambda t: re.fullmatch(r"[A-Za-z0-9._-]+", t) is not None and t not in (".", "..")), "str"),
            "description": KeySpec(None, "str"),
            "arch": KeySpec(None, "str"),
            "runtimes": KeySpec(Choice(("ort", "ort-mobile", "tflite", "tflm")), "list[str]"),
            "weight_budget_bytes": KeySpec(IntRange(1, 2**50), "int"),
            "ram_budget_bytes": KeySpec(IntRange(1, 2**50), "int"),
            "default_device": KeySpec(Predicate(lambda t: re.fullmatch(r"[A-Za-z0-9._-]+", t) is not None and t not in (".", "..")), "str"),
            "validation.horizon": KeySpec(HORIZON, "int"),
            "validation.tolerance": KeySpec(FloatRange(0.0, 100.0, lo_open=True), "float"),
            "precisions.ort.default": prec_list,
            "activations.tflm": KeySpec(Choice(("int16", "int8")), "list[str]"),
        },
        "device": {
            "name": KeySpec(Predicate(lambda t: re.fullmatch(r"[A-Za-z0-9._-]+", t) is not None and t not in (".", "..")), "str"),
            "kind": KeySpec(Choice(("local",)), "str"),
            "description": KeySpec(None, "str"),
            "timeout_s": KeySpec(FloatRange(0.0, 7 * 24 * 3600.0, lo_open=True), "float"),
            "qemu.cpu": KeySpec(Predicate(lambda t: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._+-]*", t) is not None), "str"),
            "qemu.sysroot": KeySpec(Predicate(lambda t: bool(t.strip())), "str"),
            "ssh.host": KeySpec(Predicate(lambda t: re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._:-]*", t) is not None), "str"),
            "ssh.user": KeySpec(Predicate(lambda t: re.fullmatch(r"[A-Za-z0-9_][A-Za-z0-9._-]*", t) is not None), "str"),
            "ssh.key": KeySpec(Predicate(lambda t: bool(t.strip())), "str"),
            "ssh.known_hosts": KeySpec(Predicate(lambda t: bool(t.strip())), "str"),
            "ssh.port": KeySpec(IntRange(1, 65535), "int"),
            "ssh.python": KeySpec(Predicate(lambda t: bool(t.strip()) and "\n" not in t), "str"),
            "ssh.connect_timeout_s": KeySpec(FloatRange(0.0, 7 * 24 * 3600.0, lo_open=True), "float"),
        },
    }


KEYS = _key_specs()

FILE_BASES: dict[str, tuple[list[str], Callable[[], dict[str, Any]]]] = {
    "project": (["score", "--project", "in/bad.toml", "-q", "-o", "out/s.json"], lambda: json.loads(json.dumps(PROJECT_BASE))),
    "target": (["plan", "scores.json", "--model", "m.onnx", "-t", "in/bad.toml", "-q", "-o", "out/p.json"], target_base),
    "device": (
        ["check", "art/m.ort.onnx", "-r", "chk/reference.npz", "-d", "in/bad.toml", "-o", "out/chk"],
        lambda: dict(DEVICE_BASES["local"]),
    ),
}

_OTHER_TYPES: dict[str, list[Any]] = {
    "str": [1, 1.5, True, ["x"], {"a": 1}, RawToml("1979-05-27T07:32:00Z")],
    "int": ["5", 5.0, True, [5], {"a": 1}, RawToml("1979-05-27")],
    "float": ["0.5", True, [0.5], {"a": 1}, RawToml("07:32:00")],
    "bool": ["true", 1, 0.0, [True], {"a": 1}, RawToml("1979-05-27")],
    "list[str]": ["x", 1, [1, 2], [["x"]], [{"a": 1}], {"a": 1}, [RawToml("1979-05-27")]],
    "list[int]": ["4", 4, ["4"], [4.5], [[4]], {"a": 4}],
}


def _typed(spec: KeySpec, text: str) -> Any:
    """A bad text as the key's TOML type where it parses as one, else as a string."""
    if spec.type == "int":
        return _int(text) if _int(text) is not None else text
    if spec.type == "float":
        return _float(text) if _float(text) is not None else text
    if spec.type == "list[str]":
        return [s for s in text.split(",")]
    if spec.type == "list[int]":
        parts = text.split(",")
        return [_int(p) for p in parts] if all(_int(p) is not None for p in parts) else parts
    return text


def _set(data: dict[str, Any], dotted: str, value: Any) -> dict[str, Any]:
    d = json.loads(json.dumps(data))
    *path, last = dotted.split(".")
    cur = d
    for p in path:
        cur = cur.setdefault(p, {})
    if value is _DELETE:
        cur.pop(last, None)
    else:
        cur[last] = value
    return d


_DELETE = object()


def file_case(kind: str, key: str, value: Any, why: str) -> Case:
    argv, base = FILE_BASES[kind]
    data = base()
    dotted = key
    if kind == "device" and key.split(".")[0] in ("qemu", "ssh"):
        data = json.loads(json.dumps(DEVICE_BASES[key.split(".")[0]]))
        dotted = key.split(".", 1)[1]
    try:
        text = toml_dumps(_set(data, dotted, value))
    except (TypeError, ValueError):
        text = toml_dumps(data)
    leaf = dotted.split(".")[-1]
    mention = leaf if kind == "device" and key.split(".")[0] in ("qemu", "ssh") else None
    return Case(f"{kind} {key}", tuple(argv), (("in/bad.toml", text),), why, mention)


def file_examples() -> Iterator[Case]:
    """For each key of each file: a value of every other type, the domain's bad examples, and a typo'd key."""
    for kind, keys in KEYS.items():
        for key, spec in keys.items():
            for v in _OTHER_TYPES.get(spec.type, []):
                yield file_case(kind, key, v, f"type {type(v).__name__}")
            if spec.domain is not None:
                for bad in spec.domain.examples():
                    yield file_case(kind, key, _typed(spec, bad.text), f"value {bad.text[:30]!r}")
        argv, base = FILE_BASES[kind]
        yield Case(f"{kind} unknown key", tuple(argv), (("in/bad.toml", toml_dumps({**base(), "nosuch": 1})),), "unknown key", "nosuch")


def file_cases() -> st.SearchStrategy[Case]:
    """Generated: any key of any file, set to a value of another type or outside its domain."""
    items = [(kind, key, spec) for kind, keys in KEYS.items() for key, spec in keys.items()]

    def draw(item: tuple[str, str, KeySpec]) -> st.SearchStrategy[Case]:
        kind, key, spec = item
        options = [st.sampled_from(_OTHER_TYPES.get(spec.type, [1])).map(lambda v: file_case(kind, key, v, f"type {type(v).__name__}"))]
        if spec.domain is not None:
            options.append(spec.domain.bad().map(lambda b: file_case(kind, key, _typed(spec, b.text), f"value {b.text[:30]!r}")))
        return st.one_of(*options)

    return st.sampled_from(items).flatmap(draw)


def key_coverage() -> list[str]:
    """Keys of the project, target and device models that have no domain here."""
    from pydantic import BaseModel

    from edgetqs.allocation.targets import TargetFile
    from edgetqs.core.project import ProjectFile
    from edgetqs.validation.devices import LocalDevice, QemuDevice, SshDevice

    def keys(model: type[BaseModel], prefix: str = "") -> set[str]:
        out: set[str] = set()
        for name, f in model.model_fields.items():
            ann = f.annotation
            if isinstance(ann, type) and issubclass(ann, BaseModel):
                out |= keys(ann, f"{prefix}{name}.")
            else:
                out.add(prefix + name)
        return out

    missing = []
    have = {k.split(".")[0] if k.split(".")[0] in ("precisions", "activations") else k for k in KEYS["target"]}
    for k in keys(ProjectFile) - set(KEYS["project"]):
        missing.append(f"project {k}")
    for k in keys(TargetFile) - have:
        missing.append(f"target {k}")
    for model, prefix in ((LocalDevice, ""), (QemuDevice, "qemu."), (SshDevice, "ssh.")):
        for k in keys(model):
            if k not in KEYS["device"] and prefix + k not in KEYS["device"]:
                missing.append(f"device {prefix}{k}")
    return sorted(missing)
