#!/usr/bin/env bash
# System packages Inzwa needs beyond Python: espeak-ng (TTS phonemes; run as a separate
# program, never linked, since it is GPL-3.0).
set -euo pipefail
if command -v espeak-ng >/dev/null 2>&1; then
    exit 0
fi
sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
if command -v apt-get >/dev/null 2>&1; then
    echo "installing espeak-ng (apt-get)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends espeak-ng >/dev/null
elif command -v brew >/dev/null 2>&1; then
    brew install espeak-ng
else
    echo "espeak-ng is required: install it with your system's package manager" >&2
    exit 1
fi
command -v espeak-ng >/dev/null
