#!/usr/bin/env bash
# Set up edgetqs on a fresh machine: .venv with torch 2.13.0 installed FIRST (the local CPU wheel;
# a plain resolver would pull the multi-GB CUDA build), then the package with its extras (examples,
# dev, tflite: tensorflow's Linux wheel carries no CUDA libraries; mcu: tflite-micro), then the
# Debian data the example training reads. Idempotent: rerunning only checks what is there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[examples,dev,tflite,mcu]"
# libncarg-data: the January 1996 blizzard fields the blizzard example is trained on (the trained
# model ships with the package, so this only matters for scripts/train_examples.py)
if [ ! -d /usr/share/ncarg/data/cdf ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends libncarg-data >/dev/null
fi
python -c "import torch, edgetqs; print(f'edgetqs {edgetqs.__version__} ready (torch {torch.__version__}) in .venv')"
