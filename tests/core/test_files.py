"""The safe writer (`edgetqs.core.files`): real files, links, devices, fifos, sockets, a full tmpfs, real processes."""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from edgetqs.core import files as F
from edgetqs.core.files import DiskWriteError, Policy, TargetExistsError, UnsafeTargetError
from edgetqs.errors import EdgetqsError

ROOT = Path(__file__).resolve().parents[2]
IS_ROOT = os.geteuid() == 0
VICTIM_TEXT = "victim: must never change\n"

SCORES = {"schema_version": 1, "edgetqs_version": "0.1.0", "groups": [], "state_exponent": {}, "rollout": {}, "settings": {}}
PLAN = {"schema_version": 1, "allocator": "greedy", "tensors": [], "budget_bytes": 10, "paper_objective": 0.0, "min_feasible_bytes": 1}


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def _leftovers(folder: Path, keep: set[str]) -> list[str]:
    return sorted(set(os.listdir(folder)) - keep)


@pytest.fixture
def victim(tmp_path: Path) -> Path:
    p = tmp_path / "victim.txt"
    p.write_text(VICTIM_TEXT)
    return p


def _child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra)
    return env


def _wait_marker(proc: subprocess.Popen[bytes], point: str, timeout: float = 30.0) -> str:
    """Read the child's stderr until the pause marker of ``point``; fail with what it printed otherwise."""
    assert proc.stderr is not None
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline().decode()
            if not line and proc.poll() is not None:
                break
            seen.append(line)
            if line.startswith(f"EDGETQS_PAUSED {point} "):
                return line
        elif proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise AssertionError(f"no pause marker '{point}' from the child; it printed: {''.join(seen)}")


# ------------------------------------------------------------------------------------ basics


def test_write_json_is_complete_private_to_the_folder_and_leaves_no_temp(tmp_path: Path) -> None:
    p = F.write_json(tmp_path / "sub" / "s.json", {"a": [1, 2.5, None]})
    assert json.loads(p.read_text()) == {"a": [1, 2.5, None]}
    assert stat.S_IMODE(os.stat(p).st_mode) == 0o644 & ~_umask()
    assert _leftovers(tmp_path / "sub", {"s.json"}) == []


def test_nan_is_refused_before_any_file_is_touched(tmp_path: Path) -> None:
    old = F.write_json(tmp_path / "s.json", SCORES)
    with pytest.raises(ValueError):
        F.write_json(old, {"x": float("nan")})
    assert json.loads(old.read_text()) == SCORES
    assert _leftovers(tmp_path, {"s.json"}) == []


def test_an_error_inside_the_block_removes_the_temp_and_keeps_the_old_file(tmp_path: Path) -> None:
    p = F.write_bytes(tmp_path / "a.bin", b"old")
    with pytest.raises(RuntimeError), F.atomic_write(p) as f:
        f.write(b"new, half")
        raise RuntimeError("boom")
    assert p.read_bytes() == b"old"
    assert _leftovers(tmp_path, {"a.bin"}) == []


def test_helpers_round_trip(tmp_path: Path) -> None:
    F.write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text(encoding="utf-8") == "héllo"
    F.save_npz(tmp_path / "r.npz", a=np.arange(3), meta=np.array(json.dumps({"producer": "edgetqs", "kind": "reference"})))
    with np.load(tmp_path / "r.npz") as z:
        assert z["a"].tolist() == [0, 1, 2]
    assert F.result_kind(tmp_path / "r.npz") == "reference"
    assert not (tmp_path / "r.npz.npz").exists()  # no suffix appended


# ---------------------------------------------------------------------------------- symlinks


@pytest.mark.parametrize("policy", list(Policy))
def test_a_symlink_at_the_final_name_is_never_written_through(tmp_path: Path, victim: Path, policy: Policy) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "s.json").symlink_to("../victim.txt")
    if policy is Policy.REPLACE:
        F.write_json(out / "s.json", SCORES, policy=policy)
        assert not (out / "s.json").is_symlink() and json.loads((out / "s.json").read_text()) == SCORES  # the link itself was replaced
    else:
        with pytest.raises(TargetExistsError, match="symbolic link"):
            F.write_json(out / "s.json", SCORES, policy=policy)
        assert (out / "s.json").is_symlink()
    assert victim.read_text() == VICTIM_TEXT
    assert _leftovers(out, {"s.json"}) == []


def test_symlinks_at_the_old_fixed_temp_names_are_ignored(tmp_path: Path, victim: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    for legacy in ("s.json.tmp", "reference.npz.tmp.npz", "report.html.tmp", "check.png.tmp"):
        (out / legacy).symlink_to("../victim.txt")
    F.write_json(out / "s.json", SCORES)
    F.save_npz(out / "reference.npz", a=np.zeros(2))
    F.write_text(out / "report.html", "<!doctype html><html></html>")
    F.write_bytes(out / "check.png", b"\x89PNG\r\n\x1a\n")
    assert victim.read_text() == VICTIM_TEXT


def test_the_temporary_file_is_created_exclusively_and_never_through_a_link(tmp_path: Path, victim: Path) -> None:
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "would-be-created")
    for planted in (dangling, tmp_path / "to-victim"):
        if planted.name == "to-victim":
            planted.symlink_to(victim)
        with pytest.raises(FileExistsError):
            F._open_exclusive(planted)
    assert not (tmp_path / "would-be-created").exists()
    assert victim.read_text() == VICTIM_TEXT


def test_a_link_planted_at_the_drawn_temporary_name_makes_the_writer_draw_again(
    tmp_path: Path, victim: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the random part is made predictable so that the planted link sits exactly where the first draw lands
    draws = iter(["1-1-aaaaaabbbbbb-00000001", "1-1-aaaaaabbbbbb-00000002"])
    monkeypatch.setattr(F, "_token", lambda: next(draws))
    prefix = F._temp_prefix("s.json")
    (tmp_path / f"{prefix}1-1-aaaaaabbbbbb-00000001").symlink_to(victim)
    F.write_json(tmp_path / "s.json", SCORES)
    assert victim.read_text() == VICTIM_TEXT
    assert json.loads((tmp_path / "s.json").read_text()) == SCORES
    assert (tmp_path / f"{prefix}1-1-aaaaaabbbbbb-00000001").is_symlink()  # another host's tag: clean_stale leaves it alone


# ------------------------------------------------------------- things that are not regular files


@pytest.mark.parametrize("policy", list(Policy))
def test_a_directory_is_refused_with_advice(tmp_path: Path, policy: Policy) -> None:
    (tmp_path / "d").mkdir()
    with pytest.raises(UnsafeTargetError, match=r"is a folder.*d/scores\.json"):
        F.write_json(tmp_path / "d", SCORES, policy=policy, kind="scores")
    assert (tmp_path / "d").is_dir() and os.listdir(tmp_path / "d") == []
    assert _leftovers(tmp_path, {"d"}) == []


@pytest.mark.parametrize("policy", list(Policy))
def test_a_fifo_is_refused_without_blocking(tmp_path: Path, policy: Policy) -> None:
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    with pytest.raises(UnsafeTargetError, match="fifo"):
        F.write_json(fifo, SCORES, policy=policy, kind="scores")
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert F.result_kind(fifo) is None  # sniffing it does not block either
    assert _leftovers(tmp_path, {"pipe"}) == []


def test_a_socket_is_refused() -> None:
    folder = Path(tempfile.mkdtemp(prefix="edgetqs-sock-"))  # short path: AF_UNIX names are limited to 108 bytes
    try:
        path = folder / "s"
        with socket.socket(socket.AF_UNIX) as s:
            s.bind(str(path))
            for policy in Policy:
                with pytest.raises(UnsafeTargetError, match="socket"):
                    F.write_bytes(path, b"x", policy=policy, kind="figure")
            assert stat.S_ISSOCK(os.lstat(path).st_mode)
    finally:
        for p in folder.iterdir():
            p.unlink()
        folder.rmdir()


@pytest.mark.skipif(not IS_ROOT, reason="creating a character device needs root")
@pytest.mark.parametrize("policy", list(Policy))
def test_a_character_device_is_refused_and_unchanged(tmp_path: Path, policy: Policy) -> None:
    dev = tmp_path / "full"
    try:
        os.mknod(dev, stat.S_IFCHR | 0o666, os.makedev(1, 7))  # the same device as /dev/full
    except OSError as exc:
        pytest.skip(f"mknod not allowed here: {exc}")
    before = os.lstat(dev)
    with pytest.raises(UnsafeTargetError, match="character device"):
        F.write_json(dev, SCORES, policy=policy, kind="scores")
    after = os.lstat(dev)
    assert stat.S_ISCHR(after.st_mode) and after.st_rdev == before.st_rdev and after.st_ino == before.st_ino
    assert _leftovers(tmp_path, {"full"}) == []


# -------------------------------------------------------------------------------- disk errors


@pytest.fixture
def small_tmpfs() -> Iterator[Path]:
    if not IS_ROOT:
        pytest.skip("mounting a tmpfs needs root")
    mnt = Path(tempfile.mkdtemp(prefix="edgetqs-tmpfs-"))
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        mnt.rmdir()
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", str(mnt)], check=False)
        mnt.rmdir()


def test_a_full_disk_gives_one_clear_error_and_keeps_the_old_file(small_tmpfs: Path) -> None:
    p = F.write_json(small_tmpfs / "s.json", SCORES)
    big = np.random.default_rng(0).bytes(200_000)  # incompressible, three times the file system
    with pytest.raises(DiskWriteError, match=r"cannot write '.*s\.json': no space left .*ENOSPC.*previous 's\.json' is unchanged"):
        F.write_bytes(p, big)
    assert json.loads(p.read_text()) == SCORES
    assert _leftovers(small_tmpfs, {"s.json"}) == []
    with pytest.raises(DiskWriteError, match="no space left"), F.atomic_write(small_tmpfs / "new.bin") as f:
        for _ in range(10):
            f.write(big[:20_000])
    assert _leftovers(small_tmpfs, {"s.json"}) == []


def test_a_read_only_file_system_gives_one_clear_error(small_tmpfs: Path) -> None:
    p = F.write_json(small_tmpfs / "s.json", SCORES)
    subprocess.run(["mount", "-o", "remount,ro", str(small_tmpfs)], check=True)
    with pytest.raises(DiskWriteError, match=r"read-only file system \(EROFS\).*unchanged"):
        F.write_json(p, PLAN)
    assert json.loads(p.read_text()) == SCORES


@pytest.mark.skipif(not IS_ROOT, reason="needs root to run a child as another user")
def test_permission_denied_names_the_folder_and_why(tmp_path: Path) -> None:
    folder = tmp_path / "ro"
    folder.mkdir(mode=0o755)
    os.chmod(tmp_path, 0o755)
    (folder / "s.json").write_text("{}")
    os.chmod(folder / "s.json", 0o666)  # the file is writable by anyone, the folder is not: a rename cannot happen
    code = (
        "import sys; from edgetqs.core import files as F\n"
        "try:\n    F.write_json(sys.argv[1], {'a': 1})\nexcept F.DiskWriteError as e:\n    print(e); sys.exit(3)\n"
    )
    if shutil.which("setpriv") is None:
        pytest.skip("setpriv (util-linux) is needed to run a child as another user")
    # setpriv rather than Popen(user=...): on this machine Popen(user=65534) cannot exec the venv's interpreter (EACCES), setpriv can
    r = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", sys.executable, "-c", code, str(folder / "s.json")],
        env=_child_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 3, r.stderr
    assert "permission denied in" in r.stdout and "needs write permission on the folder" in r.stdout
    assert (folder / "s.json").read_text() == "{}"


# ------------------------------------------------------------------------------- the -o policy


def test_replace_result_replaces_only_a_previous_result_of_the_same_kind(tmp_path: Path) -> None:
    p = tmp_path / "s.json"
    F.write_json(p, SCORES, policy="replace_result")  # new name: written
    F.write_json(p, {**SCORES, "groups": [1]}, policy="replace_result")  # previous scores (old-format keys): replaced
    assert json.loads(p.read_text())["groups"] == [1]
    with pytest.raises(TargetExistsError, match="is an edgetqs scores file, not a plan file"):
        F.write_json(p, PLAN, policy="replace_result")
    user = tmp_path / "notes.json"
    user.write_text('{"mine": true}')
    with pytest.raises(TargetExistsError, match="not a scores file written by edgetqs"):
        F.write_json(user, SCORES, policy="replace_result")
    assert user.read_text() == '{"mine": true}'
    marked = {"producer": "edgetqs", "kind": "targets", "schema_version": 2}
    F.write_json(tmp_path / "t.json", marked, policy="replace_result")
    F.write_json(tmp_path / "t.json", {**marked, "x": 1}, policy="replace_result")
    assert F.result_kind(tmp_path / "t.json") == "targets"
    with pytest.raises(ValueError, match="needs kind"), F.atomic_write(tmp_path / "x.bin", policy="replace_result"):
        pass


def test_refuse_existing_refuses_even_a_file_that_appears_during_the_write(tmp_path: Path) -> None:
    p = F.write_json(tmp_path / "a.json", {"a": 1}, policy="refuse_existing")
    with pytest.raises(TargetExistsError, match="exists"):
        F.write_json(p, {"a": 2}, policy="refuse_existing")
    q = tmp_path / "b.json"
    with pytest.raises(TargetExistsError), F.atomic_write(q, mode="w", policy="refuse_existing") as f:
        f.write("mine")
        q.write_text("theirs")  # another writer got there first
    assert q.read_text() == "theirs" and json.loads(p.read_text()) == {"a": 1}
    assert _leftovers(tmp_path, {"a.json", "b.json"}) == []


def test_result_kinds_of_every_format(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1])
    png = F.save_figure(fig, tmp_path / "check.png", policy="replace_result")
    assert F.result_kind(png) == "figure"
    F.save_figure(fig, png, policy="replace_result")  # our previous figure: replaced
    plain = tmp_path / "plain.png"
    fig.savefig(plain, format="png")  # matplotlib, but not written by edgetqs
    assert F.result_kind(plain) is None
    with pytest.raises(TargetExistsError):
        F.save_figure(fig, plain, policy="replace_result")
    ref = tmp_path / "reference.npz"
    np.savez_compressed(ref, meta=np.array(json.dumps({"spec": {}, "horizon": 3, "inputs": [], "outputs": []})), ctx__x=np.zeros(2))
    assert F.result_kind(ref) == "reference"  # written by an older edgetqs
    F.save_npz(ref, policy="replace_result", meta=np.array(json.dumps({"producer": "edgetqs", "kind": "reference"})))
    np.savez(tmp_path / "other.npz", meta=np.array("hello"))
    assert F.result_kind(tmp_path / "other.npz") is None
    html = F.write_text(tmp_path / "report.html", f"<!doctype html><html><head>{F.HTML_GENERATOR}</head></html>", policy="replace_result")
    assert F.result_kind(html) == "report"
    legacy = '<!doctype html><html lang="en"><head><title>edgetqs: m on t</title></head><body>edgetqs bundle report: x</body></html>'
    (tmp_path / "old.html").write_text(legacy)
    assert F.result_kind(tmp_path / "old.html") == "report"
    (tmp_path / "user.html").write_text("<!doctype html><html><body>my page</body></html>")
    assert F.result_kind(tmp_path / "user.html") is None
    assert F.result_kind(tmp_path / "missing") is None


def test_errors_are_edgetqs_errors() -> None:
    for cls in (UnsafeTargetError, TargetExistsError, DiskWriteError):
        assert issubclass(cls, EdgetqsError)


# --------------------------------------------------------------------- processes: kill -9, races

WRITER = """
import sys
from edgetqs.core import files as F
F.write_json(sys.argv[1], {"writer": sys.argv[2]})
"""


def test_kill_9_before_the_rename_keeps_the_old_file_and_the_next_write_removes_the_stale_temp(tmp_path: Path) -> None:
    p = F.write_json(tmp_path / "s.json", {"writer": "old"})
    procs = []
    for who in ("killed", "paused"):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(p), who], env=_child_env(EDGETQS_TEST_PAUSE_AT="file_before_replace"), stderr=subprocess.PIPE
        )
        _wait_marker(proc, "file_before_replace")
        procs.append(proc)
    procs[0].send_signal(signal.SIGKILL)
    procs[0].wait()
    assert json.loads(p.read_text()) == {"writer": "old"}
    temps = _leftovers(tmp_path, {"s.json"})
    assert len(temps) == 2  # one of the dead writer, one of the live one
    F.write_json(p, {"writer": "next"})
    left = _leftovers(tmp_path, {"s.json"})
    assert len(left) == 1 and left[0].startswith(F._temp_prefix("s.json") + f"{procs[1].pid}-")  # the live writer's temp stays
    procs[1].kill()
    procs[1].wait()
    assert json.loads(p.read_text()) == {"writer": "next"}


RACER = """
import json, sys
from edgetqs.core import files as F
for i in range(int(sys.argv[3])):
    F.write_json(sys.argv[1], {"writer": sys.argv[2], "i": i, "pad": "x" * 20000})
"""


def test_concurrent_writers_of_one_name_never_collide(tmp_path: Path) -> None:
    p = tmp_path / "cache.json"
    procs = [
        subprocess.Popen([sys.executable, "-c", RACER, str(p), str(w), "40"], env=_child_env(), stderr=subprocess.PIPE) for w in range(4)
    ]
    errs = [proc.communicate(timeout=120)[1].decode() for proc in procs]
    assert [proc.returncode for proc in procs] == [0] * 4, errs
    data = json.loads(p.read_text())
    assert data["i"] == 39 and data["writer"] in {"0", "1", "2", "3"}
    assert _leftovers(tmp_path, {"cache.json"}) == []


# ------------------------------------------------------------------------------- work folders


def test_make_work_dir_is_private_and_clean_stale_removes_only_dead_owners(tmp_path: Path) -> None:
    me = F.current_owner()
    live = F.make_work_dir(tmp_path, "job-")
    assert stat.S_IMODE(os.stat(live).st_mode) == 0o700 & ~_umask()
    assert F.Owner.parse(live.name[len("job-") :]) == me

    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        start = F._proc_stat(child.pid)
        assert start is not None
        sleeping = tmp_path / f"job-{F.Owner(child.pid, start[1], me.host, me.boot).token()}"
        sleeping.mkdir()
        made = {
            "dead": F.Owner(subprocess.Popen([sys.executable, "-c", "pass"]).pid, 1, me.host, me.boot),
            "reused pid": F.Owner(child.pid, start[1] + 12345, me.host, me.boot),
            "previous boot": F.Owner(child.pid, start[1], me.host, "ffffff" if me.boot != "ffffff" else "000000"),
        }
        time.sleep(0.5)  # the "dead" child exits (it is reaped by Popen's __del__ or becomes a zombie: both count as dead)
        dead = {k: tmp_path / f"job-{o.token()}" for k, o in made.items()}
        for d in dead.values():
            d.mkdir()
            (d / "f").write_text("x")
        other_host = tmp_path / f"job-{F.Owner(1, 1, 'abcdef' if me.host != 'abcdef' else '123456', me.boot).token()}"
        other_host.mkdir()
        odd = tmp_path / "job-not-a-token"
        odd.mkdir()
        removed = F.clean_stale(tmp_path, "job-")
        assert sorted(removed) == sorted(dead.values())
        for keep in (live, sleeping, other_host, odd):
            assert keep.is_dir()
        if IS_ROOT:  # another user's leftovers are not ours to remove
            foreign = tmp_path / f"job-{made['reused pid'].token()}"
            foreign.mkdir()
            os.chown(foreign, 65534, 65534)
            assert F.clean_stale(tmp_path, "job-") == [] and foreign.is_dir()
    finally:
        child.kill()
        child.wait()
    assert F.Owner(child.pid, start[1], me.host, me.boot).alive() is False  # killed and reaped: gone
