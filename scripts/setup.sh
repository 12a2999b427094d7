#!/usr/bin/env bash
# Set up edgetqs on a fresh machine: .venv with torch 2.13.0 installed FIRST (the local CPU wheel;
# a plain resolver would pull the multi-GB CUDA build), then the package with its extras (examples,
# dev, tflite: tensorflow's Linux wheel carries no CUDA libraries; mcu: tflite-micro; ray: the Ray sweep backend), then the
# Debian packages and the emulated ARM runtime below. Idempotent: rerunning only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[examples,dev,tflite,mcu,ray]"
# Debian packages (root only; each skipped when present):
#   libncarg-data    the January 1996 blizzard fields the blizzard example is trained on (the trained
#                    model ships with the package, so only scripts/train_examples.py reads them)
#   openssh-server   the ssh device's tests start an sshd on 127.0.0.1 with throwaway keys
#   chromium         renders report.html headless, to check it and take a screenshot
need=()
[ -d /usr/share/ncarg/data/cdf ] || need+=(libncarg-data)
command -v sshd >/dev/null 2>&1 || [ -x /usr/sbin/sshd ] || need+=(openssh-server)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
# the emulated Raspberry Pi runtime for the qemu-pi4 / qemu-pi5 devices (idempotent, ~70 s the first time)
if [ "$(id -u)" = 0 ] || command -v qemu-aarch64-static >/dev/null 2>&1; then
  PYTHON=python bash scripts/setup-arm-emulator.sh
fi
python -c "import torch, edgetqs; print(f'edgetqs {edgetqs.__version__} ready (torch {torch.__version__}) in .venv')"
