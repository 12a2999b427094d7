"""Devices: where a rollout check runs, read from ``devices/NAME.toml`` (or any path).

One model per device kind, registered in `DEVICE_KINDS` (``local``, ``qemu``, ``ssh``); the file's
``kind`` picks the model, whose keys are then checked (unknown keys and wrong types are errors naming
the file and the key):

    name, description                 strings (name: letters, digits, '.', '_', '-')
    kind = "local" | "qemu" | "ssh"
    timeout_s = 600                   the whole run, start to result (never a hang)
    # qemu: an emulated aarch64 Python runtime (scripts/setup-arm-emulator.sh builds the sysroot)
    cpu = "cortex-a72"                qemu's -cpu (pin it to the board's core: LiteRT's results depend on it)
    sysroot = "~/.cache/edgetqs/arm64-sysroot"
    # ssh: a real board
    host, user, key, known_hosts      strings (key and known_hosts: paths; host keys are always checked
                                      against known_hosts only, never the system-wide file)
    port = 22, python = "python3", connect_timeout_s = 10

`Device.run_job` copies a job folder (the driver, the artifact, inputs) to the device, runs the driver
and brings back ``result.json`` and ``result.npz``.
"""

from __future__ import annotations

import io
import json
import math
import os
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
import tomllib
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import PrivateAttr, ValidationError, field_validator

from ..core import catalogue
from ..core.project import Config, toml_dates
from ..core.results import describe_validation_error
from ..errors import BadInputError, EdgetqsError
from ..registry import Registry

DEFAULT_SYSROOT = "~/.cache/edgetqs/arm64-sysroot"
GUEST_PYTHON = "usr/bin/python3.11"
MAX_TIMEOUT_S = 7 * 24 * 3600.0
_CPU_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_HOST_RE = re.compile(r"[A-Za-z0-9_\[][A-Za-z0-9._:%\[\]-]*")  # names, IPv4, IPv6 (also [bracketed] and %zone)
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9._-]*")


class DeviceFileError(EdgetqsError):
    """A device file is missing, malformed, or has an unknown key."""


class DeviceError(EdgetqsError):
    """A device cannot be reached, timed out, or lacks the runtime the artifact needs."""


class Device(Config):
    """What every device kind has."""

    KIND: ClassVar[str] = ""
    name: str
    kind: str
    description: str = ""
    timeout_s: float = 600.0
    _path: str = PrivateAttr(default="")

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        try:
            return catalogue.check_name(v, "device")
        except BadInputError:
            raise ValueError("expected letters, digits, '.', '_' or '-' only (it becomes part of a folder name)") from None

    @field_validator("timeout_s", "connect_timeout_s", check_fields=False)
    @classmethod
    def _timeout(cls, v: float) -> float:
        if not (math.isfinite(v) and 0 < v <= MAX_TIMEOUT_S):
            raise ValueError(f"expected a positive, finite number of seconds up to {MAX_TIMEOUT_S:g}")
        return v

    @property
    def path(self) -> str:
        return self._path

    @property
    def emulated(self) -> bool:
        return False

    def ready(self) -> tuple[bool, str]:
        """Whether a check can run now, and why not (without contacting an ssh host)."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "kind": self.kind,
            "description": self.description,
            "path": self.path,
            "emulated": self.emulated,
            "host": self.is_host,
        }

    @property
    def is_host(self) -> bool:
        """The check runs on this computer, not on the target device."""
        return False

    def run_job(self, job_dir: Path, packages: str) -> None:
        """Run the driver in ``job_dir``; on return ``result.json`` and ``result.npz`` are there.

        Args:
            packages: what the artifact's runtime needs on the device (pip names), for the advice when missing.

        Raises:
            DeviceError: not ready, unreachable, refused, timed out, or the runtime is missing there.
        """
        ok, why = self.ready()
        if not ok:
            raise DeviceError(f"device '{self.name}' is not ready: {why}")
        try:
            self._run(job_dir, packages)
        except subprocess.TimeoutExpired:
            raise DeviceError(
                f"device '{self.name}': no result within {self.timeout_s:g} s (timeout_s in {self.path or 'the device file'})"
            ) from None

    def _run(self, job_dir: Path, packages: str) -> None:
        raise NotImplementedError

    def _local(self, cmd: list[str], job_dir: Path, packages: str) -> None:
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=self.timeout_s)
        if r.returncode != 0:
            raise _driver_failure(self, job_dir, r.returncode, r.stderr + r.stdout, packages)


class LocalDevice(Device):
    """The host: the driver runs in this Python with the host's runtimes."""

    KIND: ClassVar[str] = "local"
    kind: Literal["local"] = "local"

    @property
    def is_host(self) -> bool:
        return True

    def ready(self) -> tuple[bool, str]:
        return True, f"host Python {sys.version.split()[0]}"

    def _run(self, job_dir: Path, packages: str) -> None:
        self._local([sys.executable, str(job_dir / "driver.py"), str(job_dir)], job_dir, packages)


class QemuDevice(Device):
    """An emulated aarch64 userland (qemu user-mode on a Debian arm64 sysroot)."""

    KIND: ClassVar[str] = "qemu"
    kind: Literal["qemu"] = "qemu"
    cpu: str
    sysroot: str = DEFAULT_SYSROOT

    @field_validator("cpu")
    @classmethod
    def _cpu(cls, v: str) -> str:
        if not _CPU_RE.fullmatch(v):
            raise ValueError("expected a qemu CPU model such as cortex-a72 (letters, digits, '.', '_', '+', '-')")
        return v

    @field_validator("sysroot")
    @classmethod
    def _sysroot(cls, v: str) -> str:
        if not v.strip() or "\0" in v:
            raise ValueError("expected the path of the aarch64 sysroot folder")
        return v

    @property
    def emulated(self) -> bool:
        return True

    def sysroot_path(self) -> Path:
        return Path(os.environ.get("EDGETQS_ARM_SYSROOT", self.sysroot)).expanduser()

    def ready(self) -> tuple[bool, str]:
        if shutil.which("qemu-aarch64-static") is None:
            return False, "qemu-aarch64-static not installed: run scripts/setup-arm-emulator.sh"
        root = self.sysroot_path()
        if not (root / GUEST_PYTHON).exists() or not (root / ".edgetqs-ready").exists():
            return False, f"no aarch64 sysroot at {root}: run scripts/setup-arm-emulator.sh"
        return True, f"qemu-aarch64 -cpu {self.cpu}, sysroot {root}"

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "cpu": self.cpu, "sysroot": str(self.sysroot_path())}

    def _run(self, job_dir: Path, packages: str) -> None:
        # the guest cannot exec another aarch64 program (no binfmt): the driver is one process
        root = self.sysroot_path()
        cmd = ["qemu-aarch64-static", "-cpu", self.cpu, "-L", str(root), str(root / GUEST_PYTHON), str(job_dir / "driver.py"), str(job_dir)]
        self._local(cmd, job_dir, packages)


class SshDevice(Device):
    """A real board over ssh: key authentication only, host keys checked against ``known_hosts`` only."""

    KIND: ClassVar[str] = "ssh"
    kind: Literal["ssh"] = "ssh"
    host: str
    user: str
    key: str
    known_hosts: str
    port: int = 22
    python: str = "python3"
    connect_timeout_s: float = 10.0

    @field_validator("host")
    @classmethod
    def _host(cls, v: str) -> str:
        # ssh would read a leading '-' as an option (host = "-oProxyCommand=..." runs a command)
        if not _HOST_RE.fullmatch(v):
            raise ValueError("expected a host name or address (letters, digits, '.', '-', ':'; not starting with '-')")
        return v

    @field_validator("user")
    @classmethod
    def _user(cls, v: str) -> str:
        if not _USER_RE.fullmatch(v):
            raise ValueError("expected a user name (letters, digits, '.', '_', '-'; not starting with '-')")
        return v

    @field_validator("python")
    @classmethod
    def _python(cls, v: str) -> str:
        if not v.strip() or any(c in v for c in "\0\n\r"):
            raise ValueError("expected the path or name of the Python on the device, e.g. python3")
        return v

    @field_validator("key", "known_hosts")
    @classmethod
    def _path_given(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("expected the path of a file (an empty path would mean the current folder)")
        return v

    @field_validator("port")
    @classmethod
    def _port(cls, v: int) -> int:
        if not 1 <= v <= 65535:
            raise ValueError("expected a TCP port 1..65535")
        return v

    def ready(self) -> tuple[bool, str]:
        for what, p in (("key", self.key), ("known_hosts", self.known_hosts)):
            f = Path(p).expanduser()
            if not f.is_file():
                return False, f"{what} file {p} does not exist"
            if what == "known_hosts" and f.stat().st_size == 0:
                return (
                    False,
                    f"known_hosts file {p} is empty: record the board's host key with ssh-keyscan -p {self.port} {self.host} (and check it)",
                )
        if shutil.which("ssh") is None:
            return False, "no ssh client: apt-get install openssh-client"
        return True, f"{self.user}@{self.host}:{self.port} (reachability is checked when a check runs)"

    def summary(self) -> dict[str, Any]:
        return {**super().summary(), "host": self.host, "port": self.port, "user": self.user, "python": self.python}

    def ssh_command(self) -> list[str]:
        return [
            "ssh",
            "-p",
            str(self.port),
            "-i",
            str(Path(self.key).expanduser()),
            "-o",
            "BatchMode=yes",  # never a password or passphrase prompt
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            f"UserKnownHostsFile={Path(self.known_hosts).expanduser()}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",  # only the keys this device file names are trusted
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"ConnectTimeout={math.ceil(self.connect_timeout_s)}",
            "-o",
            "ServerAliveInterval=5",
            "-o",
            "ServerAliveCountMax=3",
            "-o",
            "LogLevel=ERROR",
            "--",
            f"{self.user}@{self.host}",
        ]

    def _error(self, rc: int, err: str) -> DeviceError:
        low = err.lower()
        if "host key verification failed" in low or "remote host identification has changed" in low:
            why = (
                f"its host key is not the one in {self.known_hosts} (add it with ssh-keyscan -p {self.port} {self.host} after checking it)"
            )
        elif "permission denied" in low:
            why = f"the key {self.key} was refused for user '{self.user}'"
        elif any(w in low for w in ("connection refused", "timed out", "no route", "could not resolve", "network is unreachable")):
            why = f"{self.host}:{self.port} is unreachable ({err.strip().splitlines()[-1] if err.strip() else 'no answer'})"
        else:
            why = err.strip().splitlines()[-1] if err.strip() else f"ssh exited with status {rc}"
        return DeviceError(f"device '{self.name}' ({self.user}@{self.host}:{self.port}): {why}")

    def _run(self, job_dir: Path, packages: str) -> None:
        # one connection: the job goes in and the results come out as tar streams
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            for f in job_dir.iterdir():
                tar.add(f, arcname=f.name)
        # a leading ~/ must stay outside the quotes for the remote shell to expand it
        py = '"$HOME"/' + shlex.quote(self.python[2:]) if self.python.startswith("~/") else shlex.quote(self.python)
        remote = (
            'd=$(mktemp -d) && trap \'rm -rf "$d"\' EXIT && tar -C "$d" -xf - && '
            f'{{ {py} "$d/driver.py" "$d" >"$d/driver.log" 2>&1; echo $? >"$d/rc"; }} ; '
            'cd "$d" && tar -cf - rc driver.log $(ls result.json result.npz 2>/dev/null)'
        )
        r = subprocess.run([*self.ssh_command(), remote], input=buf.getvalue(), capture_output=True, timeout=self.timeout_s)
        if r.returncode == 255:
            raise self._error(r.returncode, r.stderr.decode(errors="replace"))
        try:
            with tarfile.open(fileobj=io.BytesIO(r.stdout), mode="r") as tar:
                tar.extractall(job_dir, filter="data")
        except tarfile.TarError:
            raise DeviceError(f"device '{self.name}': no results came back ({r.stderr.decode(errors='replace').strip()[-300:]})") from None
        try:
            rc = int((job_dir / "rc").read_text().strip() or 1)
        except (OSError, ValueError):
            raise DeviceError(f"device '{self.name}': the driver's exit status did not come back") from None
        if rc == 127:
            raise DeviceError(f"device '{self.name}': there is no Python at '{self.python}' on {self.host}; set 'python' in {self.path}")
        if rc != 0:
            raise _driver_failure(self, job_dir, rc, (job_dir / "driver.log").read_text(errors="replace"), packages)


DEVICE_KINDS: Registry[type[Device]] = Registry("device kind")
for _kind in (LocalDevice, QemuDevice, SshDevice):
    DEVICE_KINDS.register(_kind.KIND, _kind)


def _driver_failure(device: Device, job_dir: Path, rc: int, log: str, packages: str) -> DeviceError:
    res = job_dir / "result.json"
    if res.exists():
        try:
            info = json.loads(res.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError):
            info = {}
        if info.get("error") == "missing-module":
            where = f"the Python at '{getattr(device, 'python', 'python3')}'" if isinstance(device, SshDevice) else "its Python"
            return DeviceError(
                f"device '{device.name}': {info.get('message')} ({where}, {info.get('machine')}, Python {info.get('python')}); "
                f"install it there with: pip install numpy {packages}"
            )
        if info.get("message"):
            return DeviceError(f"device '{device.name}': the driver failed: {info['message']}")
    tail = " | ".join(ln.strip() for ln in log.strip().splitlines()[-3:])
    return DeviceError(f"device '{device.name}': the driver exited with status {rc}: {tail[:400]}")


def load_device(path: str | Path) -> Device:
    """Read and validate one device file.

    Raises:
        DeviceFileError: unreadable TOML, unknown or missing key, wrong type, unknown kind.
    """
    from ..core.files import input_file

    try:
        p = input_file(path, "device file")
    except EdgetqsError as exc:
        raise DeviceFileError(str(exc)) from None
    try:
        data = tomllib.loads(p.read_text())
    except OSError as exc:
        raise DeviceFileError(f"cannot read device file '{p}': {exc.strerror}") from None
    except (UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
        raise DeviceFileError(f"{p}: not valid TOML ({exc})") from None
    date = toml_dates(data)
    if date:
        raise DeviceFileError(f"{p}: '{date}' is a TOML date or time; expected a string, number or list (quote it)")
    kind = data.get("kind")
    if not isinstance(kind, str) or kind not in DEVICE_KINDS:
        raise DeviceFileError(f"{p}: 'kind' = {kind!r}; expected one of {list(DEVICE_KINDS.names())}")
    try:
        dev = DEVICE_KINDS.get(kind).model_validate_json(json.dumps(data))
    except ValidationError as exc:
        raise DeviceFileError(describe_validation_error(exc, f"{p} ({kind} device)")) from None
    dev._path = str(p)
    return dev


def device_files() -> list[catalogue.Entry]:
    """Every device by name (project folder, $EDGETQS_DEVICES_PATH, shipped), with its origin."""
    return catalogue.entries("devices")


def find_device(name_or_path: str, announce: Callable[[str], None] | None = None) -> Device:
    """A device by name (``qemu-pi4``) or by the path of a user's own file."""
    return catalogue.find(name_or_path, "devices", load_device, announce)
