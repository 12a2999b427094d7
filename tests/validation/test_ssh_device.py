"""The ssh device against a real OpenSSH server that the tests start on 127.0.0.1 with throwaway keys.

Debian's openssh-server is installed by scripts/setup.sh. Nothing here may hang: every failure must
come back as a DeviceError within the device's timeouts.
"""

from __future__ import annotations

import getpass
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from checkutil import ort_artifact

from edgetqs.validation.check import check
from edgetqs.validation.devices import DeviceError, LocalDevice, SshDevice, load_device

pytestmark = pytest.mark.ssh

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    if not Path(SSHD).exists():
        if os.environ.get("CI"):
            pytest.fail("sshd missing in CI: scripts/setup.sh installs openssh-server")
        pytest.skip("openssh-server not installed (scripts/setup.sh installs it)")
    d = tmp_path_factory.mktemp("sshd")
    host = _keygen(d / "host_key")
    user = _keygen(d / "user_key")
    (d / "authorized_keys").write_text((d / "user_key.pub").read_text())
    os.chmod(d / "authorized_keys", 0o600)
    port = _free_port()
    cfg = d / "sshd_config"
    cfg.write_text(f"""Port {port}
ListenAddress 127.0.0.1
HostKey {host}
PidFile {d}/sshd.pid
AuthorizedKeysFile {d}/authorized_keys
StrictModes no
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
PermitRootLogin prohibit-password
AllowUsers {getpass.getuser()}
""")
    Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
    proc = subprocess.Popen([SSHD, "-D", "-e", "-f", str(cfg)], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            break
        except OSError:
            if proc.poll() is not None:
                pytest.fail(f"sshd did not start: {proc.stdout.read().decode()}")
            time.sleep(0.05)
    known = d / "known_hosts"
    known.write_text(f"[127.0.0.1]:{port} {(d / 'host_key.pub').read_text().split()[0]} {(d / 'host_key.pub').read_text().split()[1]}\n")
    yield {"port": port, "key": user, "known_hosts": known, "dir": d}
    proc.terminate()
    proc.wait(timeout=10)


def _device(sshd, tmp_path: Path, **over) -> SshDevice:
    fields = {
        "name": "loopback",
        "kind": "ssh",
        "host": "127.0.0.1",
        "port": sshd["port"],
        "user": getpass.getuser(),
        "key": str(sshd["key"]),
        "known_hosts": str(sshd["known_hosts"]),
        "python": sys.executable,
        "connect_timeout_s": 5,
        "timeout_s": 60,
    }
    fields.update(over)
    text = "\n".join(f"{k} = {v!r}".replace("'", '"') if isinstance(v, str) else f"{k} = {v}" for k, v in fields.items())
    p = tmp_path / "dev.toml"
    p.write_text(text + "\n")
    return load_device(p)  # through the file, as a user would


def test_check_over_ssh_matches_local(sshd, tmp_path: Path) -> None:
    art, ref, _ = ort_artifact(tmp_path)
    r, traj = check(art, ref, _device(sshd, tmp_path), tolerance=0.2)
    r0, traj0 = check(art, ref, LocalDevice(name="local"), tolerance=0.2)
    assert r.passed and r.device["kind"] == "ssh" and r.latency_ms["n"] == r0.latency_ms["n"]
    for k in traj0:
        assert np.array_equal(traj[k], traj0[k])  # same machine, same runtime: identical


def test_unreachable_host_is_quick_and_clear(sshd, tmp_path: Path) -> None:
    art, ref, _ = ort_artifact(tmp_path)
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match=r"device 'loopback' .*unreachable"):
        check(art, ref, _device(sshd, tmp_path, port=_free_port()), tolerance=0.2)
    assert time.perf_counter() - t0 < 30


def test_wrong_key_is_refused_without_a_prompt(sshd, tmp_path: Path) -> None:
    art, ref, _ = ort_artifact(tmp_path)
    other = _keygen(tmp_path / "other_key")
    with pytest.raises(DeviceError, match=r"key .*other_key was refused for user"):
        check(art, ref, _device(sshd, tmp_path, key=str(other)), tolerance=0.2)


def test_unknown_host_key_is_not_accepted(sshd, tmp_path: Path) -> None:
    art, ref, _ = ort_artifact(tmp_path)
    fake = _keygen(tmp_path / "fake_host")
    kh = tmp_path / "kh"
    kh.write_text(f"[127.0.0.1]:{sshd['port']} " + " ".join(fake.with_suffix(".pub").read_text().split()[:2]) + "\n")
    with pytest.raises(DeviceError, match="host key is not the one in"):
        check(art, ref, _device(sshd, tmp_path, known_hosts=str(kh)), tolerance=0.2)
    empty = tmp_path / "empty_kh"
    empty.write_text("")
    with pytest.raises(DeviceError, match="host key"):
        check(art, ref, _device(sshd, tmp_path, known_hosts=str(empty)), tolerance=0.2)
    assert empty.read_text() == ""  # nothing was learned silently


def test_remote_runtime_missing_names_device_and_package(sshd, tmp_path: Path) -> None:
    art, ref, _ = ort_artifact(tmp_path)
    bare = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(bare)], check=True)  # a Python with no numpy
    with pytest.raises(DeviceError, match=r"device 'loopback': the driver needs the Python module numpy.*pip install numpy onnxruntime"):
        check(art, ref, _device(sshd, tmp_path, python=str(bare / "bin" / "python")), tolerance=0.2)
    with pytest.raises(DeviceError, match="there is no Python at '/no/such/python'"):
        check(art, ref, _device(sshd, tmp_path, python="/no/such/python"), tolerance=0.2)


def test_a_hanging_device_times_out(sshd, tmp_path: Path) -> None:
    art, ref, _ = ort_artifact(tmp_path)
    slow = tmp_path / "slow-python"
    slow.write_text("#!/bin/sh\nsleep 60\n")
    slow.chmod(0o755)
    t0 = time.perf_counter()
    with pytest.raises(DeviceError, match="no result within 3 s"):
        check(art, ref, _device(sshd, tmp_path, python=str(slow), timeout_s=3), tolerance=0.2)
    assert time.perf_counter() - t0 < 20


def test_arguments_with_spaces_are_quoted(sshd, tmp_path: Path) -> None:
    art, ref, _ = ort_artifact(tmp_path)
    spaced = tmp_path / "dir with space"
    spaced.mkdir()
    link = spaced / "py thon"
    link.write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
    link.chmod(0o755)
    r, _ = check(art, ref, _device(sshd, tmp_path, python=str(link)), tolerance=0.2)
    assert r.passed
