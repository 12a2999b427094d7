"""Publish a finished bundle folder as ``out/NAME`` so that the name never holds half a bundle.

Layout in the output folder::

    out/NAME              symbolic link -> .NAME.v-<owner>   (relative: the output folder can move)
    out/.NAME.v-<owner>   one published version (the bundle's files); the link points at exactly one
    out/.NAME.lock        flock that serialises publishes of NAME (never deleted: deleting a lock file races)
    out/.NAME.w-<owner>   a build's work folder (`new_work_dir`), private until published
    out/.NAME.l-<owner>   a temporary link, about to replace out/NAME
    out/.NAME.m-<owner>   an old-layout bundle moved aside (only where renameat2 is missing, see below)

``<owner>`` is ``<pid>-<start time>-<host tag><boot tag>-<random>`` (`edgetqs.core.files.Owner`).

Why a link: a folder cannot be renamed over a non-empty folder, so replacing a real ``out/NAME``
needs two renames with a moment in between where the name is missing (or holds neither bundle).
Renaming a link over a link is one atomic ``rename(2)``: at every instant ``out/NAME`` resolves to
the complete old version or the complete new one, whatever is killed when. Readers should resolve
the name once (``os.path.realpath``) and read every file through that folder: the version they hold
is removed by the next publish, so a reader across a publish gets FileNotFoundError, never a mix.

Publish (`publish`), under the lock; the names in brackets are the test pause points:
    [before_lock] recover (below) -> fsync the work folder's files -> rename it to ``.NAME.v-<owner>``
    [after_rename] -> create ``.NAME.l-<owner>`` -> [before_swap] -> rename it over ``out/NAME``
    [after_swap] -> fsync the folder -> [before_cleanup] -> remove the previous version -> [after_cleanup].
    An old-layout real folder ``out/NAME`` (edgetqs before versioned bundles) is swapped with the
    temporary link in one ``renameat2(RENAME_EXCHANGE)`` (Linux >= 3.15; ext4, xfs, btrfs, tmpfs); where
    that call is missing the folder is renamed aside to ``.NAME.m-<owner>`` first [migrate_gap] and
    the name is missing until the link lands; `recover` then points the name at the newest version.
    ``out/NAME`` holding anything else (a file, a folder without manifest.json) is refused.

A second publisher of the same name waits for the lock (polling, ``timeout_s``, default 120 s: a
publish holds it for milliseconds plus one ``rmtree``) and then publishes over the first; when the
wait times out it fails cleanly with `PublishBusyError` naming the holder's pid. `publish` consumes
the work folder: on success it is the new version, on any error it is removed.

Recovery (`recover`, and at the start of every publish), under the lock: never touches the folder
the name points to; removes every other version, temporary link and moved-aside folder (no publish
is in flight while the lock is held), work folders whose owner process is gone (`clean_stale`), and
``.NAME.partial-PID`` folders of dead pids left by older edgetqs. When the name is missing but a
moved-aside bundle exists (a kill in the migration gap) it points the name at the newest complete
version first (``.v-`` folders are complete: they are renamed from the work folder only when it is
finished); an older edgetqs's ``.NAME.old-PID`` (killed between its two renames) is adopted the same way.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import shutil
import stat
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

from ..core.files import Owner, UnsafeTargetError, _disk_error, _fsync_dir, _proc_stat, clean_stale, current_owner, pause_point
from ..errors import EdgetqsError


class PublishError(EdgetqsError):
    """A bundle could not be published; the name still holds the previous bundle (or nothing, if none)."""


class PublishBusyError(PublishError):
    """Another process held the publish lock of this name for longer than the timeout."""


_USE_RENAMEAT2 = True  # tests set False in a child process to run the fallback path
_RENAME_NOREPLACE = 1
_RENAME_EXCHANGE = 2
_AT_FDCWD = -100
_NAME_RE = re.compile(r"[^/\0]{1,200}")


def validate_name(name: str) -> str:
    """Check a bundle name (one path component that does not start with a dot).

    Returns:
        The name.

    Raises:
        ValueError: a name with a slash, a leading dot, NUL, or over 200 characters.
    """
    if not isinstance(name, str) or not _NAME_RE.fullmatch(name) or name.startswith("."):
        raise ValueError(f"bundle name {name!r}: expected one file name of 1-200 characters, no '/', not starting with '.'")
    return name


def _prefixes(name: str) -> dict[str, str]:
    return {k: f".{name}.{k}-" for k in ("v", "w", "l", "m")}


def new_work_dir(out: str | os.PathLike[str], name: str) -> Path:
    """A fresh private folder ``out/.NAME.w-<owner>`` to assemble a bundle in (same file system as ``out/NAME``).

    Args:
        out: the output folder (created if missing).
        name: the bundle's name.

    Returns:
        The folder; pass it to `publish` when it is complete. If this process dies first, the next
        `recover` or `publish` of the name removes it.

    Raises:
        ValueError: a bad name. DiskWriteError: the folder cannot be created.
    """
    from ..core.files import make_work_dir

    return make_work_dir(Path(out), _prefixes(validate_name(name))["w"])


# ----------------------------------------------------------------------------- system calls


def _renameat2(src: Path, dst: Path, flags: int) -> bool:
    """rename(2) with flags; False where the C library, kernel or file system lacks them."""
    if not _USE_RENAMEAT2:
        return False
    try:
        fn = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    if fn(_AT_FDCWD, os.fsencode(src), _AT_FDCWD, os.fsencode(dst), flags) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.ENOSYS, errno.EINVAL, errno.ENOTSUP, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(src), None, str(dst))


def _rename_noreplace(src: Path, dst: Path) -> None:
    if _renameat2(src, dst, _RENAME_NOREPLACE):
        return
    if os.path.lexists(dst):  # fallback: check, then rename (dst is a fresh random name)
        raise FileExistsError(errno.EEXIST, "exists", str(dst))
    os.rename(src, dst)


def _umask() -> int:
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    old = os.umask(0o022)  # no /proc: read it the racy way
    os.umask(old)
    return old


def _fsync_tree(root: Path) -> None:
    """fsync every file and folder under ``root`` (a power cut after the swap must not leave empty files)."""
    for folder, _, files in os.walk(root):
        for fname in files:
            try:
                fd = os.open(os.path.join(folder, fname), os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError:
                continue  # a link or unreadable entry: nothing of ours to flush
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    os.fsync(fd)
            except OSError as exc:
                if exc.errno not in (errno.EINVAL, errno.EACCES, errno.EPERM):
                    raise
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _remove(path: Path) -> None:
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)
    else:
        os.unlink(path)


# ----------------------------------------------------------------------------------- the lock


@contextmanager
def _locked(out: Path, name: str, timeout_s: float) -> Iterator[float]:
    """Hold ``out/.NAME.lock`` (flock, released by the kernel if this process dies). Yields the seconds waited."""
    path = out / f".{name}.lock"
    t0 = time.monotonic()
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, 0o644)
        except OSError as exc:
            if exc.errno == errno.ELOOP:
                raise UnsafeTargetError(f"'{path}' is a symbolic link; edgetqs never follows links for its lock files: remove it") from None
            raise _disk_error(exc, path, None) from None
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UnsafeTargetError(f"'{path}' is not a regular file; remove it (edgetqs keeps its publish lock there)")
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() - t0 >= timeout_s:
                    try:
                        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
                    except OSError:
                        holder = "unknown"
                    os.close(fd)
                    raise PublishBusyError(
                        f"another edgetqs process (pid {holder}) is publishing '{out / name}' and held its lock '{path}' for more "
                        f"than {timeout_s:g} s; nothing was published (the finished work folder was removed): rerun when it is done"
                    ) from None
                time.sleep(0.05)
        try:  # someone may have deleted the lock file: a lock on the old inode locks nothing
            same = os.lstat(path).st_ino == st.st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)  # for the busy message of a waiting process
        except OSError:
            pass
        yield time.monotonic() - t0
    finally:
        os.close(fd)


# ------------------------------------------------------------------------------- inspection


def _ours(out: Path, name: str, entry: str) -> bool:
    """Whether ``entry`` (a name in ``out``) is a version folder the link may point at and we may delete."""
    p = _prefixes(name)
    for key in ("v", "m", "l"):
        if entry.startswith(p[key]) and Owner.parse(entry[len(p[key]) :]) is not None:
            return True
    return bool(re.fullmatch(rf"\.{re.escape(name)}\.old-\d+", entry))


def current_version(out: str | os.PathLike[str], name: str) -> Path | None:
    """The folder ``out/NAME`` resolves to (a real folder of the old layout included), None when it resolves to none.

    Args:
        out: the output folder.
        name: the bundle's name.
    """
    final = Path(out) / validate_name(name)
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return None
    if stat.S_ISDIR(st.st_mode):
        return final
    if stat.S_ISLNK(st.st_mode):
        target = final.parent / os.readlink(final)
        return target if target.is_dir() else None
    return None


def _link_target(final: Path) -> str | None:
    """The entry name ``final`` links to, when it is a bare name in the same folder."""
    try:
        target = os.readlink(final)
    except OSError:
        return None
    return target if "/" not in target else None


def _dead_legacy(name: str, entry: str, kind: str) -> bool:
    m = re.fullmatch(rf"\.{re.escape(name)}\.{kind}-(\d+)", entry)
    if m is None:
        return False
    pid = int(m.group(1))
    if pid <= 0 or pid == os.getpid():
        return pid <= 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    st = _proc_stat(pid)
    return st is not None and st[0] in ("Z", "X")  # a zombie is dead; a live pid (maybe reused) is left alone


def _point(out: Path, name: str, entry: str) -> None:
    """Atomically make ``out/NAME`` a link to ``entry``."""
    tmp = out / f"{_prefixes(name)['l']}{current_owner().token()}"
    os.symlink(entry, tmp)
    try:
        os.replace(tmp, out / name)
    except BaseException:
        _remove(tmp)
        raise
    _fsync_dir(out)


def _recover_locked(out: Path, name: str, keep: frozenset[str] = frozenset()) -> list[Path]:
    final = out / name
    p = _prefixes(name)
    uid = os.geteuid()
    try:
        entries = os.listdir(out)
    except FileNotFoundError:
        return []

    def mine(entry: str) -> bool:
        try:
            return os.lstat(out / entry).st_uid == uid
        except OSError:
            return False

    try:
        fst: os.stat_result | None = os.lstat(final)
    except FileNotFoundError:
        fst = None
    target: str | None = None
    if fst is not None and stat.S_ISLNK(fst.st_mode):
        target = _link_target(final)
    resolves = fst is not None and (not stat.S_ISLNK(fst.st_mode) or current_version(out, name) is not None)
    if not resolves and (fst is None or target is not None):
        # the name is missing (or dangles at a version that is gone): only a kill in the migration gap (or an
        # older edgetqs killed between its renames) leaves a bundle aside; put the name back on a complete one
        aside = [e for e in entries if mine(e) and (e.startswith(p["m"]) or _dead_legacy(name, e, "old")) and (out / e).is_dir()]
        if aside:
            versions = [e for e in entries if e.startswith(p["v"]) and mine(e) and os.path.isdir(out / e) and not os.path.islink(out / e)]
            pick = max(versions or aside, key=lambda e: os.lstat(out / e).st_mtime_ns)
            _point(out, name, pick)
            target = pick
    removed = []
    for entry in entries:
        if entry == target or entry in keep or not mine(entry):
            continue
        path = out / entry
        garbage = (
            (_ours(out, name, entry) and not entry.startswith(f".{name}.old-"))
            or _dead_legacy(name, entry, "old")
            or _dead_legacy(name, entry, "partial")
        )
        if garbage:  # under the lock no publish is in flight: every version but the current one is left over
            try:
                _remove(path)
                removed.append(path)
            except OSError:
                pass
    removed += clean_stale(out, p["w"])  # work folders of dead builds (a live owner's, ours included, stay)
    if removed:
        _fsync_dir(out)
    return removed


def recover(out: str | os.PathLike[str], name: str, *, timeout_s: float = 0.0) -> list[Path]:
    """Clean what killed publishes and builds of ``name`` left in ``out``; never touches the current version.

    Call it when a build starts (publish also runs it). See the module docstring for what is removed.

    Args:
        out: the output folder.
        name: the bundle's name.
        timeout_s: how long to wait for the lock; when another process holds it longer, nothing is
            done and [] is returned (that process recovers on its own).

    Returns:
        The paths removed.

    Raises:
        ValueError: a bad name. UnsafeTargetError: the lock file is a link or not a file.
    """
    out = Path(out)
    validate_name(name)
    if not out.is_dir():
        return []
    try:
        with _locked(out, name, timeout_s):
            return _recover_locked(out, name)
    except PublishBusyError:
        return []


# ---------------------------------------------------------------------------------- publish


@dataclass(frozen=True)
class Publication:
    """What `publish` did."""

    path: Path  # out/NAME
    version: Path  # the folder it now points to
    previous: Path | None  # the version it pointed to before (removed), None on a first publish
    waited_s: float  # time spent waiting for the lock
    recovered: tuple[Path, ...]  # left-overs removed first


def _previous(out: Path, name: str) -> tuple[str, Path | None]:
    """State of ``out/NAME``: ("missing" | "link" | "legacy", the old version folder to remove after the swap)."""
    final = out / name
    try:
        st = os.lstat(final)
    except FileNotFoundError:
        return "missing", None
    if stat.S_ISLNK(st.st_mode):
        target = _link_target(final)
        if target is not None and _ours(out, name, target):
            return "link", out / target
        return "link", None  # a link to something that is not ours: replace the link, keep its target
    if stat.S_ISDIR(st.st_mode):
        try:
            is_bundle = stat.S_ISREG(os.lstat(final / "manifest.json").st_mode)
        except OSError:
            is_bundle = False
        if not is_bundle:
            raise PublishError(
                f"'{final}' is a folder that is not an edgetqs bundle (no manifest.json); edgetqs will not replace it: "
                f"move it away or choose another output folder"
            )
        return "legacy", final
    raise PublishError(f"'{final}' exists and is not a bundle (not a folder or a link); move it away or choose another output folder")


def publish(work: str | os.PathLike[str], out: str | os.PathLike[str], name: str, *, timeout_s: float = 120.0) -> Publication:
    """Make the complete folder ``work`` the bundle ``out/NAME``, atomically (see the module docstring).

    Args:
        work: the finished bundle, a folder directly inside ``out`` (from `new_work_dir`). Consumed:
            it becomes the new version, or is removed when publishing fails.
        out: the output folder.
        name: the bundle's name.
        timeout_s: how long to wait for another publish of the same name.

    Returns:
        What was done (`Publication`).

    Raises:
        ValueError: a bad name, or ``work`` is not a folder directly inside ``out``.
        PublishBusyError: the lock stayed taken for ``timeout_s``.
        PublishError: ``out/NAME`` holds something that is not a bundle.
        UnsafeTargetError, DiskWriteError: the lock file is unsafe, or the file system refused.
    """
    out, work = Path(out), Path(work)
    validate_name(name)
    try:
        wst = os.lstat(work)
        same_parent = os.path.samefile(work.parent, out)
    except OSError:
        raise ValueError(f"work folder '{work}' or output folder '{out}' does not exist") from None
    if not stat.S_ISDIR(wst.st_mode) or not same_parent:
        raise ValueError(f"work folder '{work}' must be a folder directly inside '{out}' (use new_work_dir)")
    work = out / work.name
    pause_point("before_lock")
    version: Path | None = None
    link_tmp: Path | None = None
    swapped = False
    try:
        with _locked(out, name, timeout_s) as waited:
            recovered = _recover_locked(out, name, keep=frozenset({work.name}))
            state, old = _previous(out, name)
            _fsync_tree(work)
            os.chmod(work, 0o777 & ~_umask())  # the work folder was private; a published bundle is readable like any folder
            version = out / f"{_prefixes(name)['v']}{current_owner().token()}"
            _rename_noreplace(work, version)
            _fsync_dir(out)
            pause_point("after_rename")
            link_tmp = out / f"{_prefixes(name)['l']}{current_owner().token()}"
            os.symlink(version.name, link_tmp)
            pause_point("before_swap")
            final = out / name
            if state == "legacy":
                if _renameat2(link_tmp, final, _RENAME_EXCHANGE):
                    old = link_tmp  # the exchange left the old folder under the temporary name
                else:
                    old = out / f"{_prefixes(name)['m']}{current_owner().token()}"
                    _rename_noreplace(final, old)
                    pause_point("migrate_gap")
                    os.replace(link_tmp, final)
            else:
                os.replace(link_tmp, final)
            swapped = True
            link_tmp = None
            pause_point("after_swap")
            _fsync_dir(out)
            pause_point("before_cleanup")
            if old is not None:
                with suppress(OSError):  # left for the next recover; the new bundle is in place
                    _remove(old)
                _fsync_dir(out)
            pause_point("after_cleanup")
    except BaseException as exc:
        if not swapped:
            for leftover in (link_tmp, version, work):
                if leftover is not None:
                    with suppress(OSError):
                        _remove(leftover)
        if isinstance(exc, OSError):
            raise _disk_error(exc, out / name, None) from exc
        raise
    return Publication(out / name, version, (out / name) if state == "legacy" else old, waited, tuple(recovered))
