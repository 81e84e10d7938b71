#!/usr/bin/env bash
# Everything mixit needs on a Debian/Ubuntu machine: system packages (ffmpeg; Chromium and its
# driver for the listening-page test), a Python environment, torch, and mixit itself.
#
# Python environment: an active virtual or conda environment is used as it is; otherwise
# `.venv/` is created in the repository (with python3-venv from apt when it is missing), so the
# system Python of Debian 12 / Ubuntu >= 23.04 (PEP 668, "externally managed") is never touched.
# TORCH selects the torch requirement: the default pins the CPU build this project's machines
# keep on disk; on a GPU machine use e.g. TORCH='torch>=2.4' to keep or pick a CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
BASE_PYTHON=${PYTHON:-python3}
TORCH=${TORCH:-torch==2.13.0}
SUDO=""
if [ "$(id -u)" -ne 0 ]; then SUDO="sudo"; fi
apt_updated=""

apt_install() {
    if ! command -v apt-get >/dev/null 2>&1; then
        echo "error: $* must be installed, and this machine has no apt-get; install them with your package manager" >&2
        exit 1
    fi
    if [ -z "$apt_updated" ]; then $SUDO apt-get update -qq; apt_updated=1; fi
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq "$@" >/dev/null
}

missing=()
command -v ffmpeg >/dev/null 2>&1 && command -v ffprobe >/dev/null 2>&1 || missing+=(ffmpeg)
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v chromedriver >/dev/null 2>&1 || missing+=(chromium-driver)
if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]} (apt-get): ffmpeg for museval and compressed audio, Chromium for the listening-page test"
    apt_install "${missing[@]}"
fi

if [ -n "${VIRTUAL_ENV:-}" ] || [ -n "${CONDA_PREFIX:-}" ]; then
    PY=$(command -v python || command -v python3)
    echo "using the active environment: $PY"
else
    if [ ! -x .venv/bin/python ]; then
        if ! "$BASE_PYTHON" -c "import ensurepip, venv" >/dev/null 2>&1; then
            version=$("$BASE_PYTHON" -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
            echo "installing python${version}-venv (apt-get): needed to create .venv"
            apt_install "python${version}-venv" || apt_install python3-venv
        fi
        rm -rf .venv
        "$BASE_PYTHON" -m venv .venv
        echo "created .venv with $("$BASE_PYTHON" --version)"
    fi
    PY=.venv/bin/python
fi

"$PY" -m pip install -q --upgrade pip
"$PY" -m pip install -q "$TORCH"
"$PY" -m pip install -q -e '.[dev]'
"$PY" -c "import mixitcli, torch; print('mixit', mixitcli.__version__, 'with torch', torch.__version__)"
if [ "$PY" = .venv/bin/python ]; then
    echo "mixit is installed in .venv: run '. .venv/bin/activate' (then 'mixit --help'), or call .venv/bin/mixit;"
    echo "make test, make demo, make bench and make tableN use .venv by themselves."
fi
