"""Checkpoints of a running sweep: finished tasks are appended to a file as they come in, so a sweep that
was killed (Ctrl-C, a lost machine, an out-of-memory kill) resumes where it stopped.

The file sits next to the score cache entry and has the same key (``<key>.partial``): one line of header (the
sweep's identity: cache key, strategy, horizon, tasks, the reference trajectory's hash and the runtime
versions), then one JSON line per finished task, its divergence stored as the exact float64 bytes. A
resumed sweep reruns only the missing tasks and gives the same numbers as an uninterrupted one; a header that
does not match (other settings, another onnxruntime, a reference that rolls out differently) starts over. A
torn last line (the process died mid-write) is dropped. The file is locked while a sweep appends to it, and
removed when the sweep completes.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from .tasks import Task, TaskResult

KIND = "edgetqs sweep checkpoint"
VERSION = 1
_FSYNC_EVERY_S = 5.0


def _encode(r: TaskResult) -> bytes:
    e = None if r.e is None else base64.b64encode(np.ascontiguousarray(r.e, dtype="<f8").tobytes()).decode()
    rec = {
        "task": r.index,
        "eps": r.eps,
        "n_params": r.n_params,
        "probe": r.probe,
        "first_nonfinite": r.first_nonfinite,
        "calls": r.calls,
        "seconds": r.seconds,
        "weight_rms": r.weight_rms,
        "shape": None if r.e is None else list(r.e.shape),
        "e": e,
    }
    return (json.dumps(rec, allow_nan=False) + "\n").encode()


def _decode(line: bytes, tasks: Sequence[Task], horizon: int) -> TaskResult | None:
    """A record, or None when it does not fit this sweep's tasks."""
    d = json.loads(line)
    i = int(d["task"])
    if not 0 <= i < len(tasks):
        return None
    t = tasks[i]
    e = None
    if d["e"] is not None:
        shape = tuple(int(x) for x in d["shape"])
        if shape != (horizon, t.stop - t.start):
            return None
        e = np.frombuffer(base64.b64decode(d["e"]), dtype="<f8").astype(np.float64).reshape(shape)
    elif d["first_nonfinite"] is None:
        return None
    if "weight_rms" not in d:  # written before gamma's separation became relative: its gammas would differ
        return None
    nf = d["first_nonfinite"]
    return TaskResult(
        i,
        float(d["eps"]),
        int(d["n_params"]),
        str(d["probe"]),
        None if nf is None else int(nf),
        e,
        int(d["calls"]),
        float(d.get("seconds", 0.0)),
        float(d["weight_rms"]),
    )


class Checkpoint:
    """An open checkpoint file (see the module's docstring); `open` it, `add` results, `close` it."""

    def __init__(self, path: Path, fh: IO[bytes]) -> None:
        self.path = path
        self._fh = fh
        self._synced = time.monotonic()
        self.failed = False  # a write failed: no more records (the sweep goes on)

    @classmethod
    def open(
        cls, path: Path, header: dict[str, Any], tasks: Sequence[Task], horizon: int
    ) -> tuple[Checkpoint | None, dict[int, TaskResult], str]:
        """Open (or create) the checkpoint of the sweep ``header`` identifies.

        Returns:
            (the checkpoint, or None when it cannot be used: another sweep holds it or the folder is not
            writable; the tasks it already holds by index; a one-line account for the log, "" if nothing to say).
        """
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fh = open(path, "a+b", buffering=0)  # noqa: SIM115 - kept open while the sweep runs
        except OSError as exc:
            return None, {}, f"note: cannot keep a checkpoint at {path} ({exc}); an interrupted sweep will start over"
        if not _lock(fh):
            fh.close()
            return None, {}, f"note: another sweep is writing the checkpoint {path.name}; this one keeps none"
        head = {"kind": KIND, "version": VERSION, **header}
        fh.seek(0)
        lines = fh.read().split(b"\n")
        restored: dict[int, TaskResult] = {}
        said = ""
        good = 0  # bytes of the file that hold whole, valid lines
        try:
            ok = bool(lines[0]) and json.loads(lines[0]) == head
        except ValueError:
            ok = False
        if ok:
            good = len(lines[0]) + 1
            for line in lines[1:-1]:  # the last piece has no newline: empty, or a torn write
                try:
                    r = _decode(line, tasks, horizon)
                except (ValueError, KeyError, TypeError):
                    break
                if r is not None:
                    restored[r.index] = r
                good += len(line) + 1
            said = f"resuming the sweep from its checkpoint {path.name}: {len(restored)} of {len(tasks)} tasks already done"
        elif lines[0]:
            said = f"note: the checkpoint {path.name} belongs to another run of this sweep (other runtime or reference); starting over"
        try:
            fh.truncate(good)
            fh.seek(0, os.SEEK_END)
            if not good:
                fh.write((json.dumps(head) + "\n").encode())
        except OSError as exc:  # a full disk, say: the sweep runs on without a checkpoint, its result is what counts
            if not good:
                with contextlib.suppress(OSError):
                    path.unlink()
            fh.close()
            return None, restored, f"note: cannot keep a checkpoint at {path} ({exc}); an interrupted sweep will start over"
        return cls(path, fh), restored, said if restored or not ok else ""

    @staticmethod
    def strategy_of(path: Path) -> str | None:
        """The strategy an unfinished sweep recorded in its checkpoint (None: no readable checkpoint)."""
        try:
            with open(path, "rb") as f:
                head = json.loads(f.readline())
        except (OSError, ValueError):
            return None
        s = head.get("strategy") if isinstance(head, dict) and head.get("kind") == KIND else None
        return s if s in ("feed", "rebuild") else None

    def add(self, r: TaskResult) -> None:
        """Append one finished task (one write of one line: a kill leaves at most a torn last line). A write that
        fails (a full disk) ends the checkpointing, not the sweep: the torn line is dropped when it is resumed."""
        if self.failed:
            return
        try:
            self._fh.write(_encode(r))
            if time.monotonic() - self._synced > _FSYNC_EVERY_S:
                os.fsync(self._fh.fileno())
                self._synced = time.monotonic()
        except OSError:
            self.failed = True

    def close(self, complete: bool) -> None:
        """Release the file; ``complete``: the sweep finished, so the checkpoint is removed."""
        with contextlib.suppress(OSError):
            if complete:
                self.path.unlink()
            else:
                os.fsync(self._fh.fileno())
        self._fh.close()


def _lock(fh: IO[bytes]) -> bool:
    try:
        import fcntl
    except ImportError:  # pragma: no cover - no advisory locks on this platform
        return True
    try:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
