"""Bundle publish (`edgetqs.bundle.publish`): kill -9 at every pause point, concurrent publishers, recovery (real processes)."""

from __future__ import annotations

import hashlib
import itertools
import json
import os
import random
import select
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgetqs.bundle import publish as P
from edgetqs.core import files as F

ROOT = Path(__file__).resolve().parents[2]
NAME = "station-raspberrypi"

PUBLISHER = """
import hashlib, json, os, random, sys
from pathlib import Path
from edgetqs.bundle import publish as P
out, name, seed = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
if "noexchange" in sys.argv[4:]:
    P._USE_RENAMEAT2 = False  # the fallback path: no renameat2(RENAME_EXCHANGE)
work = P.new_work_dir(out, name)
rng = random.Random(seed)
files = {}
for i in range(rng.randint(2, 5)):
    data = rng.randbytes(rng.randint(1, 40000))
    (work / f"f{i}.bin").write_bytes(data)
    files[f"f{i}.bin"] = hashlib.sha256(data).hexdigest()
(work / "manifest.json").write_text(json.dumps({"seed": seed, "files": files}))
res = P.publish(work, out, name, timeout_s=float(os.environ.get("PUBLISH_TIMEOUT", "60")))
print(json.dumps({"version": res.version.name, "waited": res.waited_s}))
"""


def fill_bundle(folder: Path, seed: int) -> Path:
    """The same contents the child publisher writes for ``seed``."""
    rng = random.Random(seed)
    files = {}
    for i in range(rng.randint(2, 5)):
        data = rng.randbytes(rng.randint(1, 40000))
        (folder / f"f{i}.bin").write_bytes(data)
        files[f"f{i}.bin"] = hashlib.sha256(data).hexdigest()
    (folder / "manifest.json").write_text(json.dumps({"seed": seed, "files": files}))
    return folder


def bundle_seed(path: Path) -> int | None:
    """The seed of the complete bundle at ``path`` (None when the name resolves to nothing); fails on a partial one."""
    if not path.exists():
        return None
    m = json.loads((path / "manifest.json").read_text())
    assert sorted(os.listdir(path)) == sorted([*m["files"], "manifest.json"]), f"{path}: files differ from its manifest"
    for fname, digest in m["files"].items():
        assert hashlib.sha256((path / fname).read_bytes()).hexdigest() == digest, f"{path}/{fname}: hash differs"
    return int(m["seed"])


def assert_clean(out: Path, name: str = NAME) -> None:
    """Nothing but the name, its lock and the version it points to."""
    final = out / name
    expected = {f".{name}.lock"} | ({name} if os.path.lexists(final) else set())
    if final.is_symlink():
        expected.add(os.readlink(final))
    assert set(os.listdir(out)) == expected


def env(**extra: str) -> dict[str, str]:
    e = dict(os.environ)
    e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
    e.pop("EDGETQS_TEST_PAUSE_AT", None)
    e.update(extra)
    return e


def start(out: Path, seed: int, *flags: str, **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(out), NAME, str(seed), *flags],
        env=env(**extra),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )


def wait_marker(proc: subprocess.Popen[bytes], point: str, timeout: float = 30.0) -> float:
    """Read the child's stderr until it pauses at ``point``; returns the time it printed."""
    assert proc.stderr is not None
    seen: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([proc.stderr], [], [], 0.2)
        if ready:
            line = proc.stderr.readline().decode()
            seen.append(line)
            if line.startswith(f"EDGETQS_PAUSED {point} "):
                return float(line.rsplit("t=", 1)[1])
            if not line and proc.poll() is not None:
                break
        elif proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise AssertionError(f"no pause at '{point}'; the child printed: {''.join(seen)}")


def run_publisher(out: Path, seed: int, *flags: str) -> None:
    r = subprocess.run(
        [sys.executable, "-c", PUBLISHER, str(out), NAME, str(seed), *flags], env=env(), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr


def setup_previous(out: Path, scenario: str) -> None:
    out.mkdir()
    if scenario == "first":
        return
    if scenario.startswith("legacy"):  # the layout of edgetqs before versioned bundles: a real folder under the name
        (out / NAME).mkdir()
        fill_bundle(out / NAME, 1)
        return
    P.publish(fill_bundle(P.new_work_dir(out, NAME), 1), out, NAME)


# (scenario, pause point, seed the name must resolve to right after the kill, after recovery)
KILLS = [
    *[
        ("link", p, s, s)
        for p, s in (
            ("before_lock", 1),
            ("after_rename", 1),
            ("before_swap", 1),
            ("after_swap", 2),
            ("before_cleanup", 2),
            ("after_cleanup", 2),
        )
    ],
    *[
        ("legacy", p, s, s)
        for p, s in (("before_lock", 1), ("after_rename", 1), ("before_swap", 1), ("after_swap", 2), ("before_cleanup", 2))
    ],
    # without renameat2 the old-layout folder must step aside first: the one gap, which recover closes
    *[
        ("legacy-noexchange", p, s, r)
        for p, s, r in (("before_swap", 1, 1), ("migrate_gap", None, 2), ("after_swap", 2, 2), ("before_cleanup", 2, 2))
    ],
    *[("first", p, s, s) for p, s in (("before_lock", None), ("after_rename", None), ("before_swap", None), ("after_swap", 2))],
]


@pytest.mark.parametrize(("scenario", "point", "right_after", "after_recover"), KILLS, ids=[f"{k[0]}-{k[1]}" for k in KILLS])
def test_kill_9_at_each_pause_point_leaves_a_complete_bundle_and_recover_cleans(
    tmp_path: Path, scenario: str, point: str, right_after: int | None, after_recover: int | None, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "dist"
    setup_previous(out, scenario)
    flags = ("noexchange",) if scenario.endswith("noexchange") else ()
    proc = start(out, 2, *flags, EDGETQS_TEST_PAUSE_AT=point)
    wait_marker(proc, point)
    proc.kill()  # SIGKILL
    proc.wait()
    assert bundle_seed(out / NAME) == right_after
    P.recover(out, NAME)
    assert bundle_seed(out / NAME) == after_recover
    assert_clean(out)
    if flags:
        monkeypatch.setattr(P, "_USE_RENAMEAT2", False)
    P.publish(fill_bundle(P.new_work_dir(out, NAME), 3), out, NAME)  # the next publish works and leaves nothing behind
    assert bundle_seed(out / NAME) == 3
    assert_clean(out)


def test_four_concurrent_publishers_serialise_and_one_complete_bundle_wins(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    setup_previous(out, "link")
    hold = 0.4  # each publisher pauses this long right after its swap, lock held
    seeds = [10, 11, 12, 13]
    procs = [start(out, s, EDGETQS_TEST_PAUSE_AT="after_swap", EDGETQS_TEST_PAUSE_S=str(hold)) for s in seeds]
    results = [p.communicate(timeout=120) for p in procs]
    assert [p.returncode for p in procs] == [0] * 4, [e.decode() for _, e in results]
    swaps = []
    for seed, (_, err) in zip(seeds, results, strict=True):
        line = next(ln for ln in err.decode().splitlines() if ln.startswith("EDGETQS_PAUSED after_swap"))
        swaps.append((float(line.rsplit("t=", 1)[1]), seed))
    swaps.sort()
    gaps = [b[0] - a[0] for a, b in itertools.pairwise(swaps)]
    assert min(gaps) >= hold * 0.95, f"two publishers held the lock at once: swap times {swaps}"
    assert bundle_seed(out / NAME) == swaps[-1][1]  # the last one to swap is what the name holds, complete
    assert_clean(out)


def test_a_publisher_that_waits_too_long_fails_cleanly_and_names_the_holder(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    setup_previous(out, "link")
    holder = start(out, 20, EDGETQS_TEST_PAUSE_AT="after_swap")
    try:
        wait_marker(holder, "after_swap")
        r = subprocess.run(
            [sys.executable, "-c", PUBLISHER, str(out), NAME, "21"],
            env=env(PUBLISH_TIMEOUT="0.5"),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode != 0
        assert "PublishBusyError" in r.stderr and f"pid {holder.pid}" in r.stderr and "nothing was published" in r.stderr
        assert not [e for e in os.listdir(out) if e.startswith(f".{NAME}.w-")]  # its work folder went with it
        assert bundle_seed(out / NAME) == 20
        assert P.recover(out, NAME) == []  # the lock is held: recover does nothing rather than wait
    finally:
        holder.kill()
        holder.wait()
    P.recover(out, NAME)
    assert bundle_seed(out / NAME) == 20
    assert_clean(out)


def test_recover_keeps_the_current_version_of_a_dead_process_and_live_work_folders(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    setup_previous(out, "first")
    run_publisher(out, 5)  # the current version's owner (that child) is dead now
    current = os.readlink(out / NAME)
    sleeper = subprocess.Popen(
        [sys.executable, "-c", PUBLISHER, str(out), NAME, "6"],
        env=env(EDGETQS_TEST_PAUSE_AT="before_lock"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        wait_marker(sleeper, "before_lock")
        live_work = [e for e in os.listdir(out) if e.startswith(f".{NAME}.w-")]
        assert len(live_work) == 1
        dead = subprocess.Popen([sys.executable, "-c", "pass"])
        dead.wait()
        me = F.current_owner()
        stale = [
            out / f".{NAME}.w-{F.Owner(dead.pid, 1, me.host, me.boot).token()}",
            out / f".{NAME}.v-{F.Owner(dead.pid, 1, me.host, me.boot).token()}",
            out / f".{NAME}.partial-{dead.pid}",
        ]
        for s in stale:
            s.mkdir()
            fill_bundle(s, 7)
        removed = P.recover(out, NAME)
        assert sorted(removed) == sorted(stale)
        assert os.readlink(out / NAME) == current and bundle_seed(out / NAME) == 5
        assert (out / live_work[0]).is_dir()  # a live build's work folder stays
    finally:
        sleeper.kill()
        sleeper.wait()
    P.recover(out, NAME)
    assert_clean(out)


def test_an_older_edgetqs_killed_between_its_renames_is_recovered(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    for kind, seed in (("old", 1), ("partial", 2)):  # the old bundle stepped aside, the new one complete but not renamed
        (out / f".{NAME}.{kind}-{dead.pid}").mkdir()
        fill_bundle(out / f".{NAME}.{kind}-{dead.pid}", seed)
    P.recover(out, NAME)
    assert bundle_seed(out / NAME) == 1  # the old bundle is back under its name
    assert_clean(out)
    run_publisher(out, 3)
    assert bundle_seed(out / NAME) == 3
    assert_clean(out)


def test_name_holding_something_else_is_refused_and_kept(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    (out / NAME).mkdir()
    (out / NAME / "thesis.tex").write_text("mine")
    with pytest.raises(P.PublishError, match="not an edgetqs bundle"):
        P.publish(fill_bundle(P.new_work_dir(out, NAME), 1), out, NAME)
    assert (out / NAME / "thesis.tex").read_text() == "mine"
    assert set(os.listdir(out)) == {NAME, f".{NAME}.lock"}  # the consumed work folder is gone


def test_a_symlink_planted_at_the_lock_or_the_name_is_never_followed(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    out.mkdir()
    victim = tmp_path / "victim.txt"
    victim.write_text("victim")
    (out / f".{NAME}.lock").symlink_to(victim)
    with pytest.raises(F.UnsafeTargetError, match="symbolic link"):
        P.publish(fill_bundle(P.new_work_dir(out, NAME), 1), out, NAME)
    assert victim.read_text() == "victim"
    (out / f".{NAME}.lock").unlink()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep.txt").write_text("keep")
    (out / NAME).symlink_to(elsewhere)  # a link the user made: replaced, its target left alone
    P.publish(fill_bundle(P.new_work_dir(out, NAME), 2), out, NAME)
    assert bundle_seed(out / NAME) == 2 and (elsewhere / "keep.txt").read_text() == "keep"
    assert_clean(out)


def test_a_published_bundle_is_readable_by_others_and_bad_names_are_refused(tmp_path: Path) -> None:
    out = tmp_path / "dist"
    res = P.publish(fill_bundle(P.new_work_dir(out, NAME), 1), out, NAME)
    assert oct(os.stat(res.version).st_mode & 0o777) == oct(0o777 & ~_umask())
    assert P.current_version(out, NAME) == res.version and res.previous is None
    for bad in ("", "a/b", ".hidden", "x" * 201):
        with pytest.raises(ValueError):
            P.new_work_dir(out, bad)


def _umask() -> int:
    old = os.umask(0o022)
    os.umask(old)
    return old


def test_an_old_layout_folder_is_swapped_in_one_step_where_renameat2_exists(tmp_path: Path) -> None:
    import ctypes

    probe_a, probe_b = tmp_path / "a", tmp_path / "b"
    probe_a.mkdir()
    probe_b.symlink_to("a")
    libc = ctypes.CDLL(None, use_errno=True)
    if not hasattr(libc, "renameat2") or libc.renameat2(-100, bytes(probe_b), -100, bytes(probe_a), 2) != 0:
        pytest.skip("renameat2(RENAME_EXCHANGE) is not available here")
    out = tmp_path / "dist"
    setup_previous(out, "legacy")
    r = subprocess.run(
        [sys.executable, "-c", PUBLISHER, str(out), NAME, "2"],
        env=env(EDGETQS_TEST_PAUSE_AT="migrate_gap", EDGETQS_TEST_PAUSE_S="0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "EDGETQS_PAUSED migrate_gap" not in r.stderr  # the name was never missing
    assert (out / NAME).is_symlink() and bundle_seed(out / NAME) == 2
    assert_clean(out)
