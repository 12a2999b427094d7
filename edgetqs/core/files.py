"""Every file edgetqs writes goes through here: one safe writer, one policy for existing files.

How a file is written (`atomic_write` and the helpers built on it)
    1. The name is checked with ``lstat`` (never followed): a directory, a character or block device,
       a fifo or a socket is refused (`UnsafeTargetError`); what happens to an existing regular file
       or symbolic link depends on the `Policy` (below).
    2. A temporary file with a UNIQUE name (``.NAME.tmp-<pid>-<start>-<host><boot>-<random>``) is
       created beside it with ``O_CREAT | O_EXCL | O_NOFOLLOW`` and mode ``0o644`` minus the umask:
       a symlink or any file planted at that name makes the open fail, so nothing is ever written
       through a link, and two writers of the same name never share a temporary file.
    3. The content is written, flushed and fsynced; the name is checked again; the temporary file
       is renamed onto the name (``os.replace``: readers see the old file or the new one, never half
       of one) and the folder is fsynced. `Policy.REFUSE_EXISTING` uses ``link(2)`` instead, which
       never overwrites, so "refuse" holds even against a file that appears meanwhile.
    4. On any error (a full disk included) the temporary file is removed and the old file, if any,
       is left as it was. A full disk, a read-only file system or a permission problem becomes one
       `DiskWriteError` that names the path and says what to do.
    Temporary files of processes killed mid-write are removed by the next write of the same name
    (`clean_stale`: their name says which process made them, and that process is gone).

The ``-o`` policy (`Policy`), and what each command should use
    ==========================  ===================================  ===========================
    writer                      file                                 policy
    ==========================  ===================================  ===========================
    ``score -o``, ``--plot``    scores.json, PNG                     ``replace_result``
    ``plan -o``                 plan.json                            ``replace_result``
    ``check -o DIR``            check.json, reference.npz, check.png ``replace_result``
    ``convert``                 artifact, convert.json               ``refuse_existing``;
                                                                     ``replace`` with --overwrite
    ``init``                    edgetqs.toml and example files       ``refuse_existing``;
                                                                     ``replace`` with --overwrite
    ``build`` (inside the       every bundle file                    ``refuse_existing`` (the
    fresh work folder)                                               folder is new: a clash is a bug)
    score cache                 ``~/.cache/edgetqs/scores/*.json``   ``replace`` (edgetqs owns it)
    job folders (check)         job.json, inputs.npz                 ``refuse_existing``
    ==========================  ===================================  ===========================

    ``replace_result`` (the default for ``-o``): a missing name is written; an existing regular file
    is replaced only when it is a previous edgetqs result of the same kind (`result_kind`: JSON with
    ``schema_version`` and an edgetqs marker, an npz with our ``meta``, a PNG or HTML page we wrote);
    anything else (a user's file, another kind of result, a symbolic link) is refused with advice
    (`TargetExistsError`). ``replace`` replaces any regular file, and a symbolic link itself (its
    target is never touched). ``refuse_existing`` writes only a name that does not exist.

Work folders
    `make_work_dir` makes a private (0o700) folder whose name embeds the owner's pid, the process
    start time (from ``/proc``) and host/boot tags; `clean_stale` removes those whose owner is dead
    (no such pid, a zombie, or a pid reused by a process with another start time, or a previous
    boot) and leaves live ones and other hosts' ones alone. Inside such a folder (fresh, 0o700, owned by this
    process) code may write plainly (converters, the check's job folder): nobody else can plant a link there.
    What leaves it reaches its final name through this module (`atomic_write`, `edgetqs.bundle.publish`).

Inputs
    `input_file` checks a file a user gave before anything reads it: missing, a folder, a fifo or a device
    (``/dev/zero`` never ends) is one clear error, not a hang. `new_folders` removes the output folders a
    failed command created, so a refused input leaves nothing behind.

Test hook: with ``EDGETQS_TEST_PAUSE_AT=<point>[,<point>...]`` the code prints
``EDGETQS_PAUSED <point> pid=<pid> t=<unix time>`` to stderr and sleeps ``EDGETQS_TEST_PAUSE_S``
seconds (default 3600) at that named point, so a test can ``kill -9`` it there. Points here:
``file_before_replace`` (temporary file complete and fsynced, the name not yet replaced).
"""

from __future__ import annotations

import errno
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import socket
import stat
import sys
import time
import zipfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import IO, Any, Literal

from ..errors import EdgetqsError

PRODUCER = "edgetqs"
"""Value of the ``producer`` key that marks a JSON result (``{"producer": "edgetqs", "kind": ...}``)."""

HTML_GENERATOR = '<meta name="generator" content="edgetqs">'
"""Put this in the ``<head>`` of every HTML page edgetqs writes: `result_kind` recognises it."""

PNG_SOFTWARE = "edgetqs"
"""`save_figure` writes this as the PNG ``Software`` text chunk; `result_kind` recognises it."""

# JSON results written before the explicit producer marker: a kind is recognised by its keys
# (all must be present, with an integer schema_version)
_LEGACY_JSON_KEYS: dict[str, frozenset[str]] = {
    "scores": frozenset({"edgetqs_version", "groups", "state_exponent", "rollout", "settings"}),
    "plan": frozenset({"allocator", "tensors", "budget_bytes", "paper_objective", "min_feasible_bytes"}),
    "convert": frozenset({"format", "artifact", "planned_weight_bytes", "all_match", "tensors", "versions"}),
    "check": frozenset({"artifact", "artifact_sha256", "verdict", "rows", "tolerance", "latency_ms"}),
    "manifest": frozenset({"files", "artifact", "verdict", "versions", "model", "target", "sizes"}),
}

DEFAULT_NAMES: dict[str, str] = {
    "scores": "scores.json",
    "plan": "plan.json",
    "convert": "convert.json",
    "check": "check.json",
    "manifest": "manifest.json",
    "reference": "reference.npz",
    "figure": "plot.png",
    "report": "report.html",
}
"""The usual file name of each result kind (used in advice: ``-o DIR`` -> ``DIR/scores.json``)."""

_MAX_SNIFF_BYTES = 256 << 20  # a "previous result" bigger than this is not read to recognise it


# ---------------------------------------------------------------------------------------- inputs


def input_file(path: str | os.PathLike[str], what: str, advice: str = "") -> Path:
    """Check that ``path`` names a regular file (links followed) before anything reads it.

    A folder, a fifo (reading it blocks until someone writes), a character device such as ``/dev/zero``
    (reading it never ends) or a socket is refused up front, so no reader hangs or fills the memory.

    Args:
        path: the file a user gave.
        what: names it in the message (``model file``, ``project file``...).
        advice: what to give instead (appended after a semicolon).

    Returns:
        The path.

    Raises:
        BadInputError: missing, or not a regular file.
    """
    from ..errors import BadInputError

    p = Path(path)
    tail = f"; {advice}" if advice else ""
    try:
        st = os.stat(p)
    except FileNotFoundError:
        raise BadInputError(f"{what} '{p}' does not exist{tail}") from None
    except OSError as exc:
        raise BadInputError(f"cannot read {what} '{p}': {exc.strerror or exc}{tail}") from None
    if not stat.S_ISREG(st.st_mode):
        kind = _FILE_TYPES.get(stat.S_IFMT(st.st_mode), "not a regular file")
        raise BadInputError(f"{what} '{p}' is {kind}, not a regular file{tail}")
    return p


@contextmanager
def new_folders(path: str | os.PathLike[str]) -> Iterator[None]:
    """On an error inside the block, remove the folders on the way to ``path`` (itself included) that did not
    exist before and are still empty, so a command that fails leaves no empty output folder behind."""
    p = Path(path).absolute()
    missing = []
    while not os.path.lexists(p) and p != p.parent:
        missing.append(p)
        p = p.parent
    try:
        yield
    except BaseException:
        for d in missing:  # deepest first
            try:
                os.rmdir(d)
            except FileNotFoundError:
                continue  # never made: the work stopped before it
            except OSError:
                break  # not empty (or not ours to remove): it and its parents stay
        raise


# --------------------------------------------------------------------------------------- errors


class FileWriteError(EdgetqsError):
    """A result file could not be written; the previous file, if any, is unchanged."""


class UnsafeTargetError(FileWriteError):
    """The output name holds something edgetqs never replaces (a folder, a device, a fifo, a socket)."""


class TargetExistsError(FileWriteError):
    """The output name holds a file (or link) that the policy does not allow edgetqs to replace."""


class DiskWriteError(FileWriteError):
    """The file system refused the write (full, read-only, permission denied, I/O error)."""


class Policy(StrEnum):
    """What to do when the output name already exists (see the module docstring for each command)."""

    REPLACE = "replace"
    REPLACE_RESULT = "replace_result"
    REFUSE_EXISTING = "refuse_existing"


# ---------------------------------------------------------------------------------- test hook


def pause_point(point: str) -> None:
    """Test hook: print a marker to stderr and sleep when ``EDGETQS_TEST_PAUSE_AT`` names ``point``.

    Args:
        point: the name of this point in the code (documented beside each call).
    """
    wanted = os.environ.get("EDGETQS_TEST_PAUSE_AT")
    if not wanted or point not in wanted.split(","):
        return
    sys.stderr.write(f"EDGETQS_PAUSED {point} pid={os.getpid()} t={time.time():.6f}\n")
    sys.stderr.flush()
    time.sleep(float(os.environ.get("EDGETQS_TEST_PAUSE_S", "3600")))


# ------------------------------------------------------------------------------- process owners

_OWNER_RE = re.compile(r"(\d+)-(\d+)-([0-9a-f]{6})([0-9a-f]{6})-[0-9a-f]{8}")


@dataclass(frozen=True)
class Owner:
    """Which process made a temporary file or folder: pid, start time (clock ticks after boot, 0 where
    unknown), a tag of the host name and a tag of the boot (6 hex digits each)."""

    pid: int
    start: int
    host: str
    boot: str

    def token(self) -> str:
        """The owner as it appears in a name, followed by a fresh random part."""
        return f"{self.pid}-{self.start}-{self.host}{self.boot}-{secrets.token_hex(4)}"

    @classmethod
    def parse(cls, text: str) -> Owner | None:
        """The owner of a name's suffix (what follows the prefix), or None when it is not one of ours."""
        m = _OWNER_RE.fullmatch(text)
        if m is None:
            return None
        return cls(int(m.group(1)), int(m.group(2)), m.group(3), m.group(4))

    def alive(self) -> bool | None:
        """True: the process runs; False: it is gone; None: it ran on another host (cannot tell)."""
        me = current_owner()
        if self.host != me.host:
            return None
        if self.boot != me.boot:
            return False  # made before the last reboot
        if self.pid <= 0:
            return False
        if self.pid == me.pid:
            return self.start in (me.start, 0) or me.start == 0
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            pass  # exists, belongs to someone else
        st = _proc_stat(self.pid)
        if st is None:
            return True  # no /proc (not Linux) or it just exited: the pid alone says alive
        state, start = st
        if state in ("Z", "X"):
            return False  # killed, not yet reaped
        return not (self.start and start != self.start)  # a reused pid has another start time


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) from /proc/PID/stat, None without /proc."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            text = f.read().decode(errors="replace")
    except OSError:
        return None
    fields = text[text.rfind(")") + 2 :].split()  # the command name may hold spaces and parentheses
    try:
        return fields[0], int(fields[19])
    except (IndexError, ValueError):
        return None


def _tag(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:6]


_OWNER: dict[int, Owner] = {}


def current_owner() -> Owner:
    """This process as an `Owner` (computed again after a fork)."""
    pid = os.getpid()
    if pid not in _OWNER:
        st = _proc_stat(pid)
        try:
            with open("/proc/sys/kernel/random/boot_id") as f:
                boot = _tag(f.read().strip())
        except OSError:
            boot = "000000"
        _OWNER.clear()
        _OWNER[pid] = Owner(pid, st[1] if st else 0, _tag(socket.gethostname()), boot)
    return _OWNER[pid]


def make_work_dir(parent: str | os.PathLike[str], prefix: str) -> Path:
    """Create a unique private (0o700) folder ``parent/<prefix><pid>-<start>-<host><boot>-<random>``.

    Args:
        parent: where (created if missing). Bundles: the output folder (same file system, so the
            finished folder can be renamed into place); check jobs: the system's temporary folder.
        prefix: names the use, e.g. ``.station-raspberrypi.w-`` or ``edgetqs-check-``.

    Returns:
        The new folder. `clean_stale` (same parent and prefix) removes it once this process is gone.

    Raises:
        DiskWriteError: the folder cannot be created.
    """
    parent = Path(parent)
    try:
        parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, parent / prefix, None) from None
    for _ in range(100):
        path = parent / f"{prefix}{current_owner().token()}"
        try:
            os.mkdir(path, 0o700)
            return path
        except FileExistsError:
            continue  # a 32-bit random clash (or a planted name): draw again
        except OSError as exc:
            raise _disk_error(exc, path, None) from None
    raise DiskWriteError(f"could not create a work folder named '{prefix}...' in '{parent}' after 100 tries; remove stale entries there")


def clean_stale(parent: str | os.PathLike[str], prefix: str) -> list[Path]:
    """Remove the entries ``parent/<prefix><owner>`` (files, folders, links) whose owner process is gone.

    Left alone: live owners, owners on another host, names that do not parse, entries that belong to
    another user. Errors while removing one entry are ignored (the next call tries again).

    Args:
        parent: the folder to look in (a missing folder is fine).
        prefix: the prefix given to `make_work_dir` (or the temporary-file prefix of a name).

    Returns:
        The paths removed.
    """
    parent = Path(parent)
    try:
        names = os.listdir(parent)
    except OSError:
        return []
    removed = []
    uid = os.geteuid()
    for name in names:
        if not name.startswith(prefix):
            continue
        owner = Owner.parse(name[len(prefix) :])
        if owner is None or owner.alive() is not False:
            continue
        path = parent / name
        try:
            st = os.lstat(path)
            if st.st_uid != uid:
                continue
            if stat.S_ISDIR(st.st_mode):
                shutil.rmtree(path)  # rmtree never follows links inside the folder
            else:
                os.unlink(path)
            removed.append(path)
        except OSError:
            continue
    return removed


# --------------------------------------------------------------------- recognising our results


def json_kind(data: Any) -> str | None:
    """The result kind of decoded JSON: ``{"producer": "edgetqs", "kind": K, "schema_version": int}`` gives K;
    files written before that marker are recognised by their keys (scores, plan, convert, check, manifest)."""
    if not isinstance(data, Mapping) or not isinstance(data.get("schema_version"), int) or isinstance(data.get("schema_version"), bool):
        return None
    if data.get("producer") == PRODUCER and isinstance(data.get("kind"), str):
        return str(data["kind"])
    for kind, keys in _LEGACY_JSON_KEYS.items():
        if keys <= data.keys():
            return kind
    return None


def _npz_kind(raw: bytes) -> str | None:
    import numpy as np

    try:
        with zipfile.ZipFile(io.BytesIO(raw)) as z:
            if "meta.npy" not in z.namelist():
                return None
            arr = np.lib.format.read_array(io.BytesIO(z.read("meta.npy")), allow_pickle=False)
        meta = json.loads(str(arr[()]))
    except (zipfile.BadZipFile, ValueError, OSError, KeyError, TypeError, json.JSONDecodeError):
        return None
    if not isinstance(meta, dict):
        return None
    if meta.get("producer") == PRODUCER and isinstance(meta.get("kind"), str):
        return str(meta["kind"])
    if {"spec", "horizon", "inputs", "outputs"} <= meta.keys():
        return "reference"  # reference.npz written before the marker
    return None


def _png_kind(raw: bytes) -> str | None:
    if not raw.startswith(b"\x89PNG\r\n\x1a\n"):
        return None
    pos = 8
    while pos + 8 <= len(raw):
        length = int.from_bytes(raw[pos : pos + 4], "big")
        ctype = raw[pos + 4 : pos + 8]
        body = raw[pos + 8 : pos + 8 + length]
        if ctype == b"tEXt":
            key, _, value = body.partition(b"\0")
            if key == b"Software" and value.decode("latin-1").startswith(PNG_SOFTWARE):
                return "figure"
        elif ctype in (b"IDAT", b"IEND"):
            break  # matplotlib writes its text chunks before the image data
        pos += 12 + length
    return None


def _html_kind(raw: bytes) -> str | None:
    head = raw[:8192].decode("utf-8", errors="replace")
    if HTML_GENERATOR in head:
        return "report"
    low = head.lower()
    if low.startswith("<!doctype html>") and "<title>edgetqs: " in head and "edgetqs bundle report" in head:
        return "report"  # report.html written before the generator tag
    return None


def result_kind(path: str | os.PathLike[str]) -> str | None:
    """Which previous edgetqs result the regular file at ``path`` is, or None.

    Kinds: the JSON kinds of `json_kind` (``scores``, ``plan``, ``convert``, ``check``, ``manifest``, or
    the ``kind`` of an explicitly marked file), ``reference`` (an npz whose ``meta`` is ours), ``figure``
    (a PNG with our Software chunk), ``report`` (an HTML page with our generator tag). A link, a missing
    file, anything that is not a regular file or is larger than 256 MiB gives None; the file is opened
    without following links and without blocking.

    Args:
        path: the file to look at.

    Returns:
        The kind, or None when it is not recognisably ours.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_size > _MAX_SNIFF_BYTES:
            return None
        with os.fdopen(os.dup(fd), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    finally:
        os.close(fd)
    if raw.startswith(b"\x89PNG"):
        return _png_kind(raw)
    if raw.startswith(b"PK\x03\x04"):
        return _npz_kind(raw)
    stripped = raw.lstrip()
    if stripped.startswith(b"{"):
        try:
            return json_kind(json.loads(raw))
        except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
            return None
    if stripped[:15].lower().startswith(b"<!doctype html") or stripped[:6].lower() == b"<html>":
        return _html_kind(stripped)
    return None


# -------------------------------------------------------------------------------- the writer


_FILE_TYPES = {
    stat.S_IFDIR: "a folder",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFIFO: "a fifo (named pipe)",
    stat.S_IFSOCK: "a socket",
}


def _temp_prefix(name: str) -> str:
    # long names are shortened (the temporary name must stay under NAME_MAX) but stay unique per name
    short = name if len(name) <= 150 else f"{name[:100]}~{hashlib.sha256(name.encode()).hexdigest()[:16]}"
    return f".{short}.tmp-"


def _check_target(path: Path, policy: Policy, kind: str | None) -> bool:
    """Raise when ``path`` may not be replaced under ``policy``; True when something is there."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return False
    except OSError as exc:
        raise _disk_error(exc, path, None) from None
    fmt = stat.S_IFMT(st.st_mode)
    if fmt in _FILE_TYPES:
        what = _FILE_TYPES[fmt]
        hint = (
            f"; give a file name such as '{path / DEFAULT_NAMES[kind]}'"
            if fmt == stat.S_IFDIR and kind in DEFAULT_NAMES
            else "; give the path of a regular file"
        )
        raise UnsafeTargetError(f"'{path}' is {what}: edgetqs writes only regular files and never replaces {what}{hint}")
    if policy is Policy.REPLACE:
        return True
    if policy is Policy.REFUSE_EXISTING:
        what = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a file"
        raise TargetExistsError(
            f"'{path}' exists ({what}); edgetqs does not overwrite it here: move it away, "
            f"choose another output name, or pass --overwrite where the command offers it"
        )
    if stat.S_ISLNK(st.st_mode):
        raise TargetExistsError(
            f"'{path}' is a symbolic link (to '{os.readlink(path)}'); edgetqs never writes through links and "
            f"replaces only its own previous results: remove the link or choose another output name"
        )
    found = result_kind(path)
    if found == kind:
        return True
    if found is None:
        raise TargetExistsError(
            f"'{path}' exists and is not a {kind} file written by edgetqs; edgetqs replaces only its own previous "
            f"results: move it away or choose another output name"
        )
    raise TargetExistsError(
        f"'{path}' is an edgetqs {found} file, not a {kind} file; choose another output name "
        f"(for instance '{path.with_name(DEFAULT_NAMES.get(kind or '', path.name))}') or remove it"
    )


def preflight(path: str | os.PathLike[str], *, policy: Policy | str = Policy.REPLACE_RESULT, kind: str | None = None) -> None:
    """Fail now, before hours of work, when ``path`` could not be written under ``policy`` later: the same
    checks `atomic_write` makes, plus a parent that is not a folder."""
    p = Path(path)
    parent = p.parent if str(p.parent) else Path(".")
    if parent.exists() and not parent.is_dir():
        raise UnsafeTargetError(f"'{parent}' is not a folder, so '{p}' cannot be written; choose another output name")
    _check_target(p, Policy(policy), kind)
    if not p.name or p.name in (".", ".."):
        raise UnsafeTargetError(f"'{p}' names a folder, not a file; give a file name")
    # a file can be created where it will go (or in the nearest folder that exists): permissions, a read-only
    # or special file system fail now rather than after the work, and nothing is left behind
    where = parent
    while not where.exists() and where != where.parent:
        where = where.parent
    if not where.is_dir():
        raise UnsafeTargetError(f"'{where}' is not a folder, so '{p}' cannot be written; choose another output name")
    try:
        probe, fd = _create_temp(where, _temp_prefix(p.name))
    except OSError as exc:
        raise _disk_error(exc, where / p.name, None) from None
    os.close(fd)
    with suppress(OSError):
        os.unlink(probe)


_DISK_ERRNOS = {
    errno.ENOSPC,
    errno.EDQUOT,
    errno.EROFS,
    errno.EACCES,
    errno.EPERM,
    errno.EIO,
    errno.EFBIG,
    errno.ENOTDIR,
    errno.ENAMETOOLONG,
    errno.ELOOP,
    errno.EMLINK,
    errno.ETXTBSY,
}
_WRITE_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EIO, errno.EFBIG}  # surely from our own file


def _disk_error(exc: OSError, path: Path, had_old: bool | None) -> FileWriteError:
    code = errno.errorcode.get(exc.errno or 0, str(exc.errno))
    folder = path.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT):
        why = f"no space left on the file system that holds '{folder}' ({code})"
        todo = "free some space there or write elsewhere"
    elif exc.errno == errno.EROFS:
        why, todo = f"'{folder}' is on a read-only file system ({code})", "write elsewhere"
    elif exc.errno in (errno.EACCES, errno.EPERM):
        why = f"permission denied in '{folder}' ({code})"
        todo = (
            "edgetqs writes a temporary file beside the output and renames it, so it needs write permission on the folder; write elsewhere"
        )
    elif exc.errno == errno.ENOTDIR:
        why, todo = f"a part of '{folder}' is not a folder ({code})", "check the path"
    elif exc.errno == errno.EISDIR:
        return UnsafeTargetError(f"'{path}' is a folder: edgetqs writes only regular files; give a file name inside it")
    else:
        why, todo = f"{exc.strerror or exc} ({code})", "check the path and the disk"
    old = "" if had_old is None else (f"; the previous '{path.name}' is unchanged" if had_old else "; nothing was written")
    return DiskWriteError(f"cannot write '{path}': {why}{old}; {todo}")


def _fsync_dir(folder: Path) -> None:
    try:
        fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some file systems cannot fsync a folder; the rename itself is atomic anyway
    finally:
        os.close(fd)


def _open_exclusive(path: Path) -> int:
    """Create ``path`` for writing; fails with FileExistsError on anything already there, a link included."""
    return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)


def _token() -> str:
    return current_owner().token()


def _create_temp(folder: Path, prefix: str) -> tuple[Path, int]:
    for _ in range(100):
        tmp = folder / f"{prefix}{_token()}"
        try:
            return tmp, _open_exclusive(tmp)
        except FileExistsError:
            continue  # planted or clashing name: draw another
    raise DiskWriteError(f"could not create a temporary file '{prefix}...' in '{folder}' after 100 tries; remove what is planted there")


def _commit(tmp: Path, path: Path, policy: Policy, kind: str | None) -> None:
    if policy is Policy.REFUSE_EXISTING:
        try:
            os.link(tmp, path)  # link(2) never replaces: race-free "only if absent"
        except FileExistsError:
            _check_target(path, policy, kind)  # raises with the right message
            raise
        except OSError as exc:
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK, errno.ENOSYS):
                raise
            _check_target(path, policy, kind)  # no hard links on this file system: check, then rename
            os.replace(tmp, path)
            return
        os.unlink(tmp)
        return
    _check_target(path, policy, kind)  # again: the window to the rename is now microseconds
    os.replace(tmp, path)


@contextmanager
def atomic_write(
    path: str | os.PathLike[str],
    *,
    mode: Literal["wb", "w"] = "wb",
    policy: Policy | str = Policy.REPLACE,
    kind: str | None = None,
    encoding: str = "utf-8",
) -> Iterator[IO[Any]]:
    """Write ``path`` through a unique temporary file that replaces it only when everything succeeded.

    Args:
        path: the file to write (its folder is created if missing).
        mode: ``"wb"`` (bytes) or ``"w"`` (text in ``encoding``).
        policy: what to do with an existing name (`Policy`; the module docstring lists each command's).
        kind: the result kind being written; required by ``replace_result`` (an existing file is
            replaced only when `result_kind` says it is this kind).

    Yields:
        The open temporary file.

    Raises:
        UnsafeTargetError: ``path`` is a folder, a device, a fifo or a socket (nothing is written).
        TargetExistsError: ``path`` exists and ``policy`` does not allow replacing it.
        DiskWriteError: full disk, read-only file system, permission denied... (the old file is unchanged).
        ValueError: a bad mode, or ``replace_result`` without a kind.
    """
    if mode not in ("wb", "w"):
        raise ValueError(f"mode {mode!r}; expected 'wb' or 'w'")
    policy = Policy(policy)
    if policy is Policy.REPLACE_RESULT and not kind:
        raise ValueError("policy 'replace_result' needs kind= (the result kind being written, e.g. 'scores')")
    path = Path(path)
    if not path.name or path.name in (".", ".."):
        raise UnsafeTargetError(f"'{path}' names a folder, not a file; give a file name")
    folder = path.parent
    had_old = _check_target(path, policy, kind)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise _disk_error(exc, path, had_old) from None
    prefix = _temp_prefix(path.name)
    with suppress(OSError):
        clean_stale(folder, prefix)  # temporary files of writers killed mid-write
    try:
        tmp, fd = _create_temp(folder, prefix)
    except OSError as exc:
        raise _disk_error(exc, path, had_old) from None
    done = False
    try:
        f: IO[Any] = os.fdopen(fd, mode, encoding=encoding) if mode == "w" else os.fdopen(fd, mode)
        try:
            try:
                yield f
            except OSError as exc:
                if exc.errno in _WRITE_ERRNOS:
                    raise _disk_error(exc, path, had_old) from None
                raise
            try:
                f.flush()
                os.fsync(f.fileno())
                f.close()
            except OSError as exc:
                raise _disk_error(exc, path, had_old) from None
        finally:
            if not f.closed:
                # on the way out of an error: closing flushes what is still buffered, which fails again on a
                # full disk; that second error would hide the first, and the temporary file is removed anyway
                with suppress(OSError):
                    f.close()
        pause_point("file_before_replace")
        try:
            _commit(tmp, path, policy, kind)
        except FileExistsError:
            raise TargetExistsError(f"'{path}' appeared while it was being written; edgetqs does not overwrite it here") from None
        except IsADirectoryError:
            raise UnsafeTargetError(f"'{path}' became a folder while it was being written; nothing was replaced") from None
        except OSError as exc:
            raise _disk_error(exc, path, had_old) from None
        done = True
        _fsync_dir(folder)
    finally:
        if not done:
            with suppress(OSError):
                os.unlink(tmp)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, policy: Policy | str = Policy.REPLACE, kind: str | None = None) -> Path:
    """Write ``data`` with `atomic_write`. Returns the path. Raises as `atomic_write`."""
    with atomic_write(path, mode="wb", policy=policy, kind=kind) as f:
        f.write(data)
    return Path(path)


def write_text(
    path: str | os.PathLike[str], text: str, *, policy: Policy | str = Policy.REPLACE, kind: str | None = None, encoding: str = "utf-8"
) -> Path:
    """Write ``text`` with `atomic_write`; an HTML page with `HTML_GENERATOR` in its head is kind ``report``.

    Returns:
        The path.

    Raises:
        As `atomic_write`.
    """
    if kind is None and Policy(policy) is Policy.REPLACE_RESULT:
        kind = _html_kind(text.encode(encoding, errors="replace").lstrip())
    with atomic_write(path, mode="w", policy=policy, kind=kind, encoding=encoding) as f:
        f.write(text)
    return Path(path)


def write_json(
    path: str | os.PathLike[str],
    data: Mapping[str, Any],
    *,
    policy: Policy | str = Policy.REPLACE,
    kind: str | None = None,
    indent: int | None = 1,
) -> Path:
    """Write ``data`` as JSON (``allow_nan=False``: NaN and Inf are refused, write them as null) with `atomic_write`.

    Args:
        path: the file.
        data: a JSON-able mapping; with ``replace_result`` its kind is taken from `json_kind` unless given.
        policy, kind: as `atomic_write`.
        indent: as `json.dumps`.

    Returns:
        The path.

    Raises:
        ValueError: a NaN/Inf or an object JSON cannot hold (nothing is written); else as `atomic_write`.
    """
    text = json.dumps(data, indent=indent, allow_nan=False)  # before any file is touched
    if kind is None and Policy(policy) is Policy.REPLACE_RESULT:
        kind = json_kind(data)
    return write_text(path, text, policy=policy, kind=kind)


def save_npz(
    path: str | os.PathLike[str],
    /,
    *,
    policy: Policy | str = Policy.REPLACE,
    kind: str | None = None,
    compressed: bool = True,
    **arrays: Any,
) -> Path:
    """Write arrays as ``.npz`` (no ``.npz`` is appended to the name) with `atomic_write`.

    Args:
        path: the file.
        policy, kind: as `atomic_write`; with ``replace_result`` the kind is read from a ``meta`` array (a JSON
            string, ``{"producer": "edgetqs", "kind": ...}``, or a reference's meta) unless given.
        compressed: ``np.savez_compressed`` rather than ``np.savez``.
        arrays: name -> array.

    Returns:
        The path.

    Raises:
        As `atomic_write`.
    """
    import numpy as np

    buf = io.BytesIO()
    (np.savez_compressed if compressed else np.savez)(buf, **arrays)  # in memory first: a bad array writes nothing
    raw = buf.getvalue()
    if kind is None and Policy(policy) is Policy.REPLACE_RESULT:
        kind = _npz_kind(raw)
    return write_bytes(path, raw, policy=policy, kind=kind)


def save_figure(fig: Any, path: str | os.PathLike[str], *, policy: Policy | str = Policy.REPLACE, dpi: int = 110) -> Path:
    """Save a matplotlib figure as PNG (kind ``figure``, marked with `PNG_SOFTWARE`) with `atomic_write`.

    The figure is neither laid out nor closed here (the caller decides).

    Args:
        fig: a ``matplotlib.figure.Figure``.
        path: the PNG file.
        policy: as `atomic_write`.
        dpi: resolution.

    Returns:
        The path.

    Raises:
        As `atomic_write`.
    """
    from .. import __version__

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi, metadata={"Software": f"{PNG_SOFTWARE} {__version__} (matplotlib)"})
    return write_bytes(path, buf.getvalue(), policy=policy, kind="figure")
