#!/usr/bin/env bash
# Set up mogen from nothing on a Debian machine: system packages, a venv in .venv, pinned deps.
# Re-running is cheap: pip skips what is already installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive PIP_DISABLE_PIP_VERSION_CHECK=1

need_apt=()
command -v tesseract >/dev/null || need_apt+=(tesseract-ocr)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf ] || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then SUDO=""; else SUDO="sudo"; fi
  $SUDO apt-get update -qq
  $SUDO apt-get install -y -qq "${need_apt[@]}" >/dev/null
fi

PY=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PY" -m venv .venv
# torch and torchvision must be a matching pair; on CPU-only machines pip finds them on local disk.
.venv/bin/pip install -q -r requirements.txt
# image-reward pins timm 0.6.13 and hpsv2 pulls extras we don't use: install both without deps.
.venv/bin/pip install -q --no-deps -r requirements-nodeps.txt
.venv/bin/pip install -q --no-deps -e .
echo "mogen is installed in .venv (activate with: source .venv/bin/activate)"
