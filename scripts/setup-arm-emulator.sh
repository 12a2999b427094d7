#!/usr/bin/env bash
# Build the emulated Raspberry-Pi-class aarch64 Python runtime that the qemu-pi4 / qemu-pi5 devices use
# (recipe in ../shared/TOOLCHAIN.md): qemu user-mode + a Debian bookworm arm64 sysroot with Python 3.11
# (the Raspberry Pi OS Bookworm 64-bit userland) + aarch64 wheels of numpy, onnxruntime, ai-edge-litert.
# Idempotent: a finished sysroot is left alone (delete it, or pass --force, to rebuild). Needs root for
# apt-get; about 70 s and 270 MB.
#   SYSROOT: where to build (default ~/.cache/edgetqs/arm64-sysroot; the device files point there,
#            EDGETQS_ARM_SYSROOT overrides it for edgetqs too)
set -euo pipefail
SYSROOT=${EDGETQS_ARM_SYSROOT:-${SYSROOT:-$HOME/.cache/edgetqs/arm64-sysroot}}
HOSTPY=${PYTHON:-python3}
if [ "${1:-}" = "--force" ]; then rm -rf "$SYSROOT"; fi
if [ -f "$SYSROOT/.edgetqs-ready" ] && command -v qemu-aarch64-static >/dev/null; then
  echo "aarch64 sysroot ready at $SYSROOT"; exit 0
fi
KEYRING=/usr/share/keyrings/debian-archive-keyring.gpg  # verifies the arm64 packages downloaded below
if ! command -v qemu-aarch64-static >/dev/null || [ ! -f "$KEYRING" ]; then
  [ "$(id -u)" = 0 ] || { echo "error: qemu-user-static or debian-archive-keyring is missing and installing them needs root (apt-get)" >&2; exit 2; }
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends qemu-user-static debian-archive-keyring >/dev/null
fi
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
rm -rf "$SYSROOT.partial"; mkdir -p "$SYSROOT.partial"
ROOT=$SYSROOT.partial
# 1. Debian bookworm arm64 python3 + libstdc++6 and their closure, with a private apt state
APT=$WORK/apt
mkdir -p "$APT/etc/apt/sources.list.d" "$APT/etc/apt/preferences.d" "$APT/var/lib/apt/lists/partial" \
         "$APT/var/cache/apt/archives/partial" "$APT/var/lib/dpkg"
touch "$APT/var/lib/dpkg/status"
echo "deb [arch=arm64 signed-by=$KEYRING] http://deb.debian.org/debian bookworm main" > "$APT/etc/apt/sources.list"
APTOPTS=(-o "Dir=$APT" -o "Dir::State::status=$APT/var/lib/dpkg/status" -o APT::Architecture=arm64 -o APT::Architectures::=arm64
         -o "Dir::Etc::trusted=/etc/apt/trusted.gpg" -o "Dir::Etc::trustedparts=/etc/apt/trusted.gpg.d" -o Debug::NoLocking=1)
apt-get "${APTOPTS[@]}" update -qq
apt-get "${APTOPTS[@]}" install -y -qq --download-only python3 libstdc++6 >/dev/null
n=0
for deb in "$APT"/var/cache/apt/archives/*.deb; do dpkg-deb -x "$deb" "$ROOT"; n=$((n+1)); done
echo "unpacked $n arm64 packages"
# usrmerge: bookworm's packages put the loader under /lib; make the merged layout complete
for d in lib bin sbin; do [ -e "$ROOT/$d" ] || ln -s "usr/$d" "$ROOT/$d"; done
# 2. precompile the stdlib with the host Python (halves emulated import time)
"$HOSTPY" -m compileall -q -j 0 "$ROOT/usr/lib/python3.11" >/dev/null 2>&1 || true
# 3. an ARM /proc/cpuinfo: qemu's -L redirects the guest's open(); onnxruntime segfaults on the host's x86 one
mkdir -p "$ROOT/proc"
cat > "$ROOT/proc/cpuinfo" <<'CPU'
processor	: 0
BogoMIPS	: 108.00
Features	: fp asimd evtstrm crc32 cpuid
CPU implementer	: 0x41
CPU architecture: 8
CPU variant	: 0x0
CPU part	: 0xd08
CPU revision	: 3

Hardware	: BCM2835
Model		: Raspberry Pi 4 Model B Rev 1.4
CPU
# 4. aarch64 wheels of the runtimes the driver uses
PLAT=(--only-binary=:all: --platform manylinux2014_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux_2_27_aarch64
      --platform manylinux_2_28_aarch64 --python-version 3.11 --implementation cp --abi cp311)
"$HOSTPY" -m pip download -q "${PLAT[@]}" -d "$WORK/wheels" numpy onnxruntime ai-edge-litert
"$HOSTPY" -m pip install -q --no-index --find-links "$WORK/wheels" "${PLAT[@]}" --target "$ROOT/usr/local/lib/python3.11/dist-packages" \
  numpy onnxruntime ai-edge-litert
# 5. smoke test, then publish under the final name
qemu-aarch64-static -cpu cortex-a72 -L "$ROOT" "$ROOT/usr/bin/python3.11" -c \
  "import platform, numpy, onnxruntime, ai_edge_litert.interpreter; print('aarch64 guest:', platform.machine(), 'numpy', numpy.__version__, 'onnxruntime', onnxruntime.__version__)"
touch "$ROOT/.edgetqs-ready"
rm -rf "$SYSROOT"; mv "$ROOT" "$SYSROOT"
echo "aarch64 sysroot ready at $SYSROOT ($(du -sh "$SYSROOT" | cut -f1))"
