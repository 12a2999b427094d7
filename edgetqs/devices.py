"""Devices: where a rollout check runs, read from `devices/NAME.toml` (or any path).

Schema (unknown keys are an error naming the file and the key):

    name, description                 strings
    kind = "local" | "qemu" | "ssh"
    timeout_s = 600                   the whole run, start to result (never a hang)
    # qemu: an emulated aarch64 Python runtime (scripts/setup-arm-emulator.sh builds the sysroot)
    cpu = "cortex-a72"                qemu's -cpu (pin it to the board's core: LiteRT's results depend on it)
    sysroot = "~/.cache/edgetqs/arm64-sysroot"
    # ssh: a real board
    host, user, key, known_hosts      strings (key and known_hosts: paths; host keys are always checked)
    port = 22, python = "python3", connect_timeout_s = 10

`run_job` copies a job folder (the driver, the artifact, inputs) to the device, runs the driver and
brings back ``result.json`` and ``result.npz``.
"""

from __future__ import annotations

import io
import json
import os
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgetqsError


class DeviceFileError(EdgetqsError):
    """A device file is missing, malformed, or has an unknown key."""


class DeviceError(EdgetqsError):
    """A device cannot be reached, timed out, or lacks the runtime the artifact needs."""


DEVICE_DIRS = [Path.cwd() / "devices", Path(__file__).resolve().parents[1] / "devices"]
KINDS = ("local", "qemu", "ssh")
DEFAULT_SYSROOT = "~/.cache/edgetqs/arm64-sysroot"
GUEST_PYTHON = "usr/bin/python3.11"
# what each format needs on the device (pip names)
RUNTIME_PACKAGES = {"ort": "onnxruntime", "ort-mobile": "onnxruntime", "tflite": "ai-edge-litert (or tflite-runtime)", "tflm": "tflite-micro"}

_KEYS: dict[str, tuple[type | tuple[type, ...], tuple[str, ...]]] = {
    "name": (str, KINDS), "description": (str, KINDS), "kind": (str, KINDS), "timeout_s": ((int, float), KINDS),
    "cpu": (str, ("qemu",)), "sysroot": (str, ("qemu",)),
    "host": (str, ("ssh",)), "port": (int, ("ssh",)), "user": (str, ("ssh",)), "key": (str, ("ssh",)),
    "known_hosts": (str, ("ssh",)), "python": (str, ("ssh",)), "connect_timeout_s": ((int, float), ("ssh",)),
}
_REQUIRED = {"local": ("name", "kind"), "qemu": ("name", "kind", "cpu"), "ssh": ("name", "kind", "host", "user", "key", "known_hosts")}


@dataclass(frozen=True)
class Device:
    name: str
    kind: str
    description: str = ""
    timeout_s: float = 600.0
    cpu: str = ""
    sysroot: str = DEFAULT_SYSROOT
    host: str = ""
    port: int = 22
    user: str = ""
    key: str = ""
    known_hosts: str = ""
    python: str = "python3"
    connect_timeout_s: float = 10.0
    path: str = ""

    @property
    def emulated(self) -> bool:
        return self.kind == "qemu"

    def sysroot_path(self) -> Path:
        return Path(os.environ.get("EDGETQS_ARM_SYSROOT", self.sysroot)).expanduser()

    def ready(self) -> tuple[bool, str]:
        """Whether a check can run now, and why not (without contacting an ssh host)."""
        if self.kind == "local":
            return True, f"host Python {sys.version.split()[0]}"
        if self.kind == "qemu":
            if shutil.which("qemu-aarch64-static") is None:
                return False, "qemu-aarch64-static not installed: run scripts/setup-arm-emulator.sh"
            root = self.sysroot_path()
            if not (root / GUEST_PYTHON).exists() or not (root / ".edgetqs-ready").exists():
                return False, f"no aarch64 sysroot at {root}: run scripts/setup-arm-emulator.sh"
            return True, f"qemu-aarch64 -cpu {self.cpu}, sysroot {root}"
        for what, p in (("key", self.key), ("known_hosts", self.known_hosts)):
            if not Path(p).expanduser().exists():
                return False, f"{what} file {p} does not exist"
        if shutil.which("ssh") is None:
            return False, "no ssh client: apt-get install openssh-client"
        return True, f"{self.user}@{self.host}:{self.port} (reachability is checked when a check runs)"

    def to_dict(self) -> dict:
        d = {"name": self.name, "kind": self.kind, "description": self.description, "path": self.path}
        if self.kind == "qemu":
            d.update(cpu=self.cpu, sysroot=str(self.sysroot_path()))
        if self.kind == "ssh":
            d.update(host=self.host, port=self.port, user=self.user, python=self.python)
        return d


def load_device(path: str | Path) -> Device:
    """Read and validate one device file.

    Raises:
        DeviceFileError: unreadable TOML, unknown or missing key, wrong type, unknown kind.
    """
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise DeviceFileError(f"cannot read device file '{p}': {exc.strerror}") from None
    except tomllib.TOMLDecodeError as exc:
        raise DeviceFileError(f"{p}: not valid TOML ({exc})") from None
    kind = data.get("kind")
    if kind not in KINDS:
        raise DeviceFileError(f"{p}: 'kind' = {kind!r}; expected one of {list(KINDS)}")
    for key, value in data.items():
        if key not in _KEYS or kind not in _KEYS[key][1]:
            allowed = sorted(k for k, (_, kinds) in _KEYS.items() if kind in kinds)
            raise DeviceFileError(f"{p}: unknown key '{key}' for a {kind} device; expected one of {allowed}")
        want = _KEYS[key][0]
        if not isinstance(value, want) or isinstance(value, bool):
            names = "/".join(t.__name__ for t in (want if isinstance(want, tuple) else (want,)))
            raise DeviceFileError(f"{p}: '{key}' = {value!r} has type {type(value).__name__}; expected {names}")
    for key in _REQUIRED[kind]:
        if key not in data:
            raise DeviceFileError(f"{p}: a {kind} device needs '{key}'")
    for key in ("timeout_s", "connect_timeout_s", "port"):
        if key in data and data[key] <= 0:
            raise DeviceFileError(f"{p}: '{key}' = {data[key]}; expected a positive number")
    return Device(**data, path=str(p))


def device_files() -> list[Path]:
    """Shipped and local device files, local ones (./devices) first; one per name."""
    from .targets import named_files

    return named_files(DEVICE_DIRS)


def find_device(name_or_path: str) -> Device:
    """A device by name (``qemu-pi4``) or by the path of a user's own file."""
    from .targets import find_named

    return find_named(name_or_path, DEVICE_DIRS, "device", load_device)


def _driver_failure(device: Device, job_dir: Path, rc: int, log: str, fmt: str) -> DeviceError:
    res = job_dir / "result.json"
    if res.exists():
        try:
            info = json.loads(res.read_text())
        except json.JSONDecodeError:
            info = {}
        if info.get("error") == "missing-module":
            pkgs = RUNTIME_PACKAGES.get(fmt, info.get("missing"))  # numpy missing: the runtime is likely missing too
            where = f"the Python at '{device.python}'" if device.kind == "ssh" else "its Python"
            return DeviceError(f"device '{device.name}': {info.get('message')} ({where}, {info.get('machine')}, Python {info.get('python')}); "
                               f"install it there with: pip install numpy {pkgs}")
        if info.get("message"):
            return DeviceError(f"device '{device.name}': the driver failed: {info['message']}")
    tail = " | ".join(ln.strip() for ln in log.strip().splitlines()[-3:])
    return DeviceError(f"device '{device.name}': the driver exited with status {rc}: {tail[:400]}")


def _ssh_base(device: Device) -> list[str]:
    return ["ssh", "-p", str(device.port), "-i", str(Path(device.key).expanduser()),
            "-o", "BatchMode=yes",  # never a password or passphrase prompt
            "-o", "StrictHostKeyChecking=yes", "-o", f"UserKnownHostsFile={Path(device.known_hosts).expanduser()}",
            "-o", "IdentitiesOnly=yes", "-o", f"ConnectTimeout={int(device.connect_timeout_s)}",
            "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3", "-o", "LogLevel=ERROR",
            f"{device.user}@{device.host}"]


def _ssh_error(device: Device, rc: int, err: str) -> DeviceError:
    low = err.lower()
    if "host key verification failed" in low or "remote host identification has changed" in low:
        why = f"its host key is not the one in {device.known_hosts} (add it with ssh-keyscan -p {device.port} {device.host} after checking it)"
    elif "permission denied" in low:
        why = f"the key {device.key} was refused for user '{device.user}'"
    elif "connection refused" in low or "timed out" in low or "no route" in low or "could not resolve" in low or "network is unreachable" in low:
        why = f"{device.host}:{device.port} is unreachable ({err.strip().splitlines()[-1] if err.strip() else 'no answer'})"
    else:
        why = err.strip().splitlines()[-1] if err.strip() else f"ssh exited with status {rc}"
    return DeviceError(f"device '{device.name}' ({device.user}@{device.host}:{device.port}): {why}")


def run_job(device: Device, job_dir: Path, fmt: str) -> None:
    """Run the driver in ``job_dir`` on ``device``; on return ``result.json`` and ``result.npz`` are there.

    Raises:
        DeviceError: not ready, unreachable, refused, timed out, or the runtime is missing there.
    """
    ok, why = device.ready()
    if not ok:
        raise DeviceError(f"device '{device.name}' is not ready: {why}")
    driver = job_dir / "driver.py"
    try:
        if device.kind in ("local", "qemu"):
            if device.kind == "local":
                cmd = [sys.executable, str(driver), str(job_dir)]
            else:  # the guest cannot exec another aarch64 program (no binfmt): the driver is one process
                root = device.sysroot_path()
                cmd = ["qemu-aarch64-static", "-cpu", device.cpu, "-L", str(root), str(root / GUEST_PYTHON), str(driver), str(job_dir)]
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=device.timeout_s)
            if r.returncode != 0:
                raise _driver_failure(device, job_dir, r.returncode, r.stderr + r.stdout, fmt)
            return
        # ssh: one connection; the job goes in and the results come out as tar streams
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in job_dir.iterdir():
                tar.add(f, arcname=f.name)
        # a leading ~/ must stay outside the quotes for the remote shell to expand it
        py = '"$HOME"/' + shlex.quote(device.python[2:]) if device.python.startswith("~/") else shlex.quote(device.python)
        remote = ("d=$(mktemp -d) && trap 'rm -rf \"$d\"' EXIT && tar -C \"$d\" -xf - && "
                  f"{{ {py} \"$d/driver.py\" \"$d\" >\"$d/driver.log\" 2>&1; echo $? >\"$d/rc\"; }} ; "
                  "cd \"$d\" && tar -cf - rc driver.log $(ls result.json result.npz 2>/dev/null)")
        r = subprocess.run([*_ssh_base(device), remote], input=buf.getvalue(), capture_output=True, timeout=device.timeout_s)
        if r.returncode == 255:
            raise _ssh_error(device, r.returncode, r.stderr.decode(errors="replace"))
        try:
            with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r") as tar:
                tar.extractall(job_dir, filter="data")
        except tarfile.TarError:
            raise DeviceError(f"device '{device.name}': no results came back ({r.stderr.decode(errors='replace').strip()[-300:]})") from None
        rc = int((job_dir / "rc").read_text().strip() or 1)
        if rc == 127:
            raise DeviceError(f"device '{device.name}': there is no Python at '{device.python}' on {device.host}; set 'python' in {device.path}")
        if rc != 0:
            raise _driver_failure(device, job_dir, rc, (job_dir / "driver.log").read_text(errors="replace"), fmt)
    except subprocess.TimeoutExpired:
        raise DeviceError(f"device '{device.name}': no result within {device.timeout_s:g} s (timeout_s in {device.path or 'the device file'})") from None
