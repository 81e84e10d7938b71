#!/usr/bin/env bash
# Everything mixit needs on a fresh Debian/Ubuntu machine: ffmpeg (system), torch, the package.
# TORCH selects the torch requirement: the default pins the CPU build that this project's
# machines keep on disk; elsewhere use e.g. TORCH='torch>=2.4' to keep or pick a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}

if ! command -v ffmpeg >/dev/null 2>&1 || ! command -v ffprobe >/dev/null 2>&1; then
    SUDO=""
    if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
    echo "installing ffmpeg (needed by museval/stempeg and for compressed audio)"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq ffmpeg >/dev/null
fi
"$PYTHON" -m pip install -q "$TORCH"
"$PYTHON" -m pip install -q -e '.[dev]'
"$PYTHON" -c "import mixitcli, torch; print('mixit', mixitcli.__version__, 'with torch', torch.__version__)"
