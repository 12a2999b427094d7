"""Fault tests with real ``edgetqs`` processes (issue 12): kill -9 of ``build`` at each stage and between the
publish steps, links planted at every output and temporary name, and four concurrent builds with and without
``--force``. After each: the bundle's name holds a complete bundle (its manifest verifies) or nothing, no file
of the user's changed, and the next run leaves no temporary file or folder of a dead process behind.

    pytest tests/robustness/test_faults.py            # all of them (slow: real builds)
"""

from __future__ import annotations

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import robust

from edgetqs.bundle.manifest import verify_manifest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[2]
BUNDLE = "m-x86-64"
BUILD = ["build", "m.onnx", "-t", "x86-64", "-c", "rec.csv", "-k", "3", "-d", "local", "-o", "dist", "--no-refine"]


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> robust.Workspace:
    return robust.build_workspace(tmp_path_factory.mktemp("faults") / "ws")


def env(ws: robust.Workspace, **extra: str) -> dict[str, str]:
    e = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}", "EDGETQS_CACHE_DIR": str(ws.root / ".cache")}
    e["TMPDIR"] = str(ws.root / "tmp")
    e.pop("EDGETQS_TEST_PAUSE_AT", None)
    return {**e, **extra}


def start(ws: robust.Workspace, argv: list[str], **extra: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "edgetqs.cli", *argv], cwd=ws.root, env=env(ws, **extra), stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )


def wait_pause(proc: subprocess.Popen[bytes], point: str, timeout: float = 600) -> None:
    """Read the child's stderr until it says it paused at ``point`` (raw reads: a buffered readline could hold the
    marker in Python's buffer where select() never sees it)."""
    assert proc.stderr is not None
    fd = proc.stderr.fileno()
    text = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1.0)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk and proc.poll() is not None:
                break
            text += chunk
            if f"EDGETQS_PAUSED {point} ".encode() in text:
                return
        elif proc.poll() is not None:
            break
    proc.kill()
    proc.wait()
    raise AssertionError(f"no pause at {point}; the child said: {text.decode(errors='replace')[-2000:]}")


def bundle_state(ws: robust.Workspace) -> str | None:
    """None when the bundle's name resolves to nothing; else its manifest's creation time, after checking that
    every file it lists is there and unchanged (a half bundle fails here)."""
    path = ws.root / "dist" / BUNDLE
    if not path.exists():
        assert not path.is_symlink(), "the name is a dangling link"
        return None
    real = Path(os.path.realpath(path))
    assert verify_manifest(real) == [], verify_manifest(real)
    return str(json.loads((real / "manifest.json").read_text())["created_utc"]) + real.name


def leftovers(ws: robust.Workspace) -> list[str]:
    """Temporary files and folders in dist/, the cache and the temporary folder, and versions the name does not hold."""
    dist = ws.root / "dist"
    current = os.readlink(dist / BUNDLE) if (dist / BUNDLE).is_symlink() else None
    out = [f"dist/{n}" for n in os.listdir(dist) if n.startswith(".") and n != f".{BUNDLE}.lock" and n != current] if dist.exists() else []
    out += [f".cache/scores/{n}" for n in os.listdir(ws.root / ".cache" / "scores") if ".tmp-" in n]
    out += [f"tmp/{n}" for n in os.listdir(ws.root / "tmp") if n.startswith("edgetqs-")]
    return sorted(out)


BUILD_POINTS = ["build_scored", "build_planned", "check_job_ready", "build_converted", "build_checked", "build_reported"]
PUBLISH_POINTS = ["before_lock", "after_rename", "before_swap", "after_swap", "before_cleanup", "after_cleanup", "file_before_replace"]


@pytest.mark.parametrize("first", [True, pytest.param(False, marks=pytest.mark.long)], ids=["first-build", "over-a-bundle"])
def test_kill_9_at_every_stage_and_publish_step_never_leaves_half_a_bundle(ws: robust.Workspace, first: bool) -> None:
    """kill -9 at each named point of a build (and between the publish steps): right after each kill the name
    holds the previous complete bundle (or nothing before the first one), or the new complete one once the link
    was swapped; the next build publishes a complete bundle and removes everything the killed ones left."""
    if first:
        shutil.rmtree(ws.root / "dist", ignore_errors=True)
    else:
        assert bundle_state(ws) is not None  # the workspace's own build
    before = bundle_state(ws)
    user = robust.snapshot(ws.root)
    outcomes = []
    for point in BUILD_POINTS + PUBLISH_POINTS:
        proc = start(ws, BUILD, EDGETQS_TEST_PAUSE_AT=point)
        wait_pause(proc, point)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        now = bundle_state(ws)  # complete or nothing: asserted inside
        swapped = point in ("after_swap", "before_cleanup", "after_cleanup")  # the link was renamed over the name
        assert (now != before) == swapped, (point, before, now)
        outcomes.append((point, "new" if now != before else ("old" if before else "none")))
        before = now
    assert leftovers(ws), "the kills should have left work folders behind for the next build to clean"
    r = subprocess.run([sys.executable, "-m", "edgetqs.cli", *BUILD], cwd=ws.root, env=env(ws), capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-2000:]
    assert bundle_state(ws) is not None and leftovers(ws) == [], leftovers(ws)
    after = robust.snapshot(ws.root)
    changed = [k for k, v in user.items() if after.get(k) != v and not k.startswith(("dist/", ".cache/", "tmp/"))]
    assert changed == [], changed  # nothing of the user's was touched
    print(outcomes)


def test_links_planted_at_every_output_and_temporary_name_are_never_followed(ws: robust.Workspace) -> None:
    """A link to a file of the user's at each name a command writes (and at the old fixed temporary names):
    the final names are refused, the temporary names are never opened, and the linked file stays as it was."""
    victim = ws.root / "user.txt"
    before = victim.read_bytes()
    # the entry `score -k 3 -T 4` reuses (the workspace holds several; their names are hashes of the key)
    r = robust.run_cli(["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "o/s.json"], ws.root)
    assert "reusing scores from " in r.stderr, r.stderr
    cache_entry = Path(r.stderr.split("reusing scores from ", 1)[1].split()[0])
    ws.restore()
    plants = {
        "score": (["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "o/s.json", "--plot", "o/s.png"],
                  ["o/s.json.tmp", "o/.s.json.tmp", "o/s.png.tmp", f".cache/scores/{cache_entry.name}.tmp"], ["o/s.json", "o/s.png"]),
        "plan": (["plan", "scores.json", "-t", "x86-64", "--model", "m.onnx", "-q", "-o", "o/p.json", "--pareto", "3", "--plot", "o/f.png"],
                 ["o/p.json.tmp", "o/.p.json.tmp"], ["o/p.json", "o/f.png"]),
        "convert": (["convert", "m.onnx", "-p", "plan.json", "-f", "ort", "-c", "rec.csv", "-k", "3", "-o", "o/art"],
                    ["o/art/convert.json.tmp"], ["o/art/m.ort.onnx", "o/art/convert.json"]),
        "check": (["check", "art/m.ort.onnx", "-m", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-o", "o/chk"],
                  ["o/chk/reference.npz.tmp.npz", "o/chk/check.json.tmp"], ["o/chk/check.json", "o/chk/check.png", "o/chk/reference.npz"]),
        "init": (["init", "o/proj"], [], ["o/proj/model.onnx", "o/proj/edgetqs.toml"]),
    }  # fmt: skip
    for command, (argv, temps, finals) in plants.items():
        # the temporary names: the command succeeds and writes its results, never through them
        robust._make(ws.root, tuple((t, robust.Link(os.path.relpath(victim, (ws.root / t).parent))) for t in temps))
        r = robust.run_cli(argv, ws.root, timeout=300)
        assert r.rc in (0, 1) and not r.error_lines, (command, r.stderr[-800:])
        assert victim.read_bytes() == before, command
        ws.restore()
        # each final name: refused, the link and its target kept
        for f in finals:
            robust._make(ws.root, ((f, robust.Link(os.path.relpath(victim, (ws.root / f).parent))),))
            r = robust.run_cli(argv, ws.root, timeout=300)
            assert r.rc == 2 and len(r.error_lines) == 1 and ("link" in r.error_lines[0] or "exist" in r.error_lines[0]), (
                f,
                r.stderr[-800:],
            )
            assert (ws.root / f).is_symlink() and victim.read_bytes() == before, f
            ws.restore()
    # the score cache is edgetqs's own: a link at an entry's name is replaced as a link, its target never written
    os.unlink(cache_entry)
    os.symlink(victim, cache_entry)
    r = robust.run_cli(["score", "m.onnx", "-c", "rec.csv", "-k", "3", "-T", "4", "-q", "-o", "o/s.json"], ws.root)
    assert r.rc == 0 and victim.read_bytes() == before and not cache_entry.is_symlink(), r.stderr
    ws.restore()


@pytest.mark.parametrize("force", [pytest.param(False, marks=pytest.mark.long), True], ids=["cached", "force"])
def test_four_concurrent_builds_serialise_and_every_manifest_verifies(ws: robust.Workspace, force: bool) -> None:
    """Four builds of the same bundle at once (with --force all four rescore and write the same cache entry):
    each ends with status 0, the bundle the name holds verifies, and no temporary file or version is left."""
    argv = [*BUILD, "--force"] if force else BUILD
    procs = [start(ws, argv) for _ in range(4)]
    results = [p.communicate(timeout=1200) for p in procs]
    errs = [e.decode(errors="replace") for _, e in results]
    assert [p.returncode for p in procs] == [0] * 4, "\n".join(e[-600:] for e in errs)
    assert not any("Traceback" in e or "error:" in e for e in errs)
    assert bundle_state(ws) is not None and leftovers(ws) == [], leftovers(ws)
    for entry in (ws.root / ".cache" / "scores").glob("*.json"):
        json.loads(entry.read_text())  # every cache entry is whole
    bundles = [Path(os.path.realpath(ws.root / "dist" / BUNDLE))]
    assert all(verify_manifest(b) == [] for b in bundles)


def test_a_killed_check_leaves_its_job_folder_for_the_next_check_to_remove(ws: robust.Workspace) -> None:
    argv = ["check", "art/m.ort.onnx", "-r", "chk/reference.npz", "-o", "o/chk"]
    proc = start(ws, argv, EDGETQS_TEST_PAUSE_AT="check_job_ready")
    wait_pause(proc, "check_job_ready")
    proc.kill()
    proc.wait()
    left = [n for n in os.listdir(ws.root / "tmp") if n.startswith("edgetqs-check-")]
    assert len(left) == 1
    r = subprocess.run([sys.executable, "-m", "edgetqs.cli", *argv], cwd=ws.root, env=env(ws), capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert [n for n in os.listdir(ws.root / "tmp") if n.startswith("edgetqs-check-")] == []
    assert tempfile.gettempdir() != str(ws.root / "tmp")  # the test's own process was left alone
    ws.restore()


def test_ctrl_c_stops_a_sweep_with_workers_at_once(ws: robust.Workspace) -> None:
    """Ctrl-C (SIGINT to the whole process group, as a terminal sends it) while worker processes score groups:
    status 130 within seconds, one line, no traceback from the parent or the workers, no worker left running,
    no scores written. (Leaving the process pool used to wait for every batch: a Ctrl-C did nothing for minutes.)"""
    import models
    import numpy as np

    models.deep_mlp(ws.root / "deep.onnx", n=8, hidden=128, layers=12)
    np.save(ws.root / "deep.npy", np.random.default_rng(0).standard_normal((200, 8)).astype(np.float32))
    argv = ["score", "deep.onnx", "-c", "deep.npy", "-k", "8", "-T", "3000", "--workers", "2", "--strategy", "rebuild", "-o", "deep.json"]
    proc = subprocess.Popen(
        [sys.executable, "-m", "edgetqs.cli", *argv],
        cwd=ws.root,
        env=env(ws, EDGETQS_TEST_PAUSE_AT="sweep_workers_started", EDGETQS_TEST_PAUSE_S="0"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),  # a shell's background job would ignore SIGINT
    )

    def workers() -> list[int]:
        found = []
        for d in Path("/proc").iterdir():
            if d.name.isdigit():
                try:
                    stat_ = (d / "stat").read_text()
                    if int(stat_[stat_.rfind(")") + 2 :].split()[1]) == proc.pid and b"spawn_main" in (d / "cmdline").read_bytes():
                        found.append(int(d.name))
                except (OSError, ValueError, IndexError):
                    continue
        return found

    wait_pause(proc, "sweep_workers_started")  # the workers are started (a Ctrl-C while they start is ignored)
    assert proc.poll() is None, proc.communicate()[1].decode()[-1500:]
    running = workers()
    assert len(running) == 2, running
    time.sleep(1.0)  # let them start scoring
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError("Ctrl-C did not stop the sweep within 60 s") from None
    text = err.decode(errors="replace")
    assert proc.returncode == 130 and time.monotonic() - t0 < 30, text[-1500:]
    assert "Traceback" not in text and [ln for ln in text.splitlines() if ln.strip()] == ["interrupted"], text[-1500:]
    time.sleep(0.5)
    assert [p for p in running if _alive(p)] == [], running
    assert not (ws.root / "deep.json").exists()
    ws.restore()


def _alive(pid: int) -> bool:
    """The process runs (a zombie waiting to be reaped does not)."""
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return st[st.rfind(")") + 2] != "Z"
