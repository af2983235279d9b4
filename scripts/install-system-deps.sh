#!/usr/bin/env bash
# System packages Inzwa needs beyond Python:
#   espeak-ng     TTS phonemes; run as a separate program, never linked, since it is GPL-3.0.
#   redis-server  only for the tests of the shared (Redis) rate-limit backend; a deployment
#                 points INZWA_REDIS_URL at its own Redis instead.
#   chromium      only for the real-browser tests of the page (tests/test_browser.py, driven by
#                 Playwright with the system browser: Playwright's own download is not reachable).
#                 Not installed with Homebrew (no formula); those tests skip without it.
#   postgresql    only the server binaries, for the PostgreSQL store's tests (apt only).
# Installs whichever of them is missing; a no-op when all are present.
# Docker for the compose test (tests/test_compose.py) where the machine allows it: see
# scripts/setup-docker.sh (INZWA_INSTALL_DOCKER=0 skips it). It never fails this script; the
# compose test skips with what went wrong.
set -euo pipefail

bash "$(dirname "$0")/setup-docker.sh" || true

# command name -> package name, per package manager (they differ for redis on Homebrew).
missing_apt=()
missing_brew=()
if ! command -v espeak-ng >/dev/null 2>&1; then
    missing_apt+=(espeak-ng)
    missing_brew+=(espeak-ng)
fi
if ! command -v redis-server >/dev/null 2>&1; then
    missing_apt+=(redis-server)
    missing_brew+=(redis)
fi
if ! command -v chromium >/dev/null 2>&1; then
    missing_apt+=(chromium)
fi
# PostgreSQL server binaries (not a running service): tests/test_store_postgres.py starts a
# throwaway server of its own; the store's default is SQLite.
if command -v apt-get >/dev/null 2>&1 && ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
    missing_apt+=(postgresql)
fi
if [ "${#missing_apt[@]}" -eq 0 ] && [ "${#missing_brew[@]}" -eq 0 ]; then
    exit 0
fi

sudo=""
if [ "$(id -u)" != 0 ]; then
    sudo="sudo"
fi
if command -v apt-get >/dev/null 2>&1; then
    echo "installing ${missing_apt[*]} (apt-get)" >&2
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends \
        "${missing_apt[@]}" >/dev/null
elif command -v brew >/dev/null 2>&1; then
    if [ "${#missing_brew[@]}" -eq 0 ]; then
        exit 0
    fi
    echo "installing ${missing_brew[*]} (brew)" >&2
    brew install "${missing_brew[@]}"
else
    echo "${missing_apt[*]} required: install with your system's package manager" >&2
    exit 1
fi
command -v espeak-ng >/dev/null
command -v redis-server >/dev/null
if command -v apt-get >/dev/null 2>&1; then
    command -v chromium >/dev/null
fi
