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
#   INZWA_INSTALL_DOCKER=1  also Docker for the compose test (tests/test_compose.py, opt-in with
#                 INZWA_COMPOSE_TEST=1): Debian's docker.io, docker-compose and debootstrap, and
#                 dockerd started in the background when none answers (no systemd here).
set -euo pipefail

install_docker() {
    local sudo=""
    [ "$(id -u)" = 0 ] || sudo="sudo"
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    command -v docker-compose >/dev/null 2>&1 || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    if [ "${#missing[@]}" -gt 0 ]; then
        echo "installing ${missing[*]} (apt-get)" >&2
        $sudo apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
    fi
    if ! $sudo docker info >/dev/null 2>&1; then
        echo "starting dockerd (log: /tmp/dockerd.log)" >&2
        $sudo sh -c 'nohup dockerd >/tmp/dockerd.log 2>&1 &'
        for _ in $(seq 1 30); do $sudo docker info >/dev/null 2>&1 && return 0; sleep 1; done
        echo "dockerd did not start: see /tmp/dockerd.log" >&2
        return 1
    fi
}
if [ "${INZWA_INSTALL_DOCKER:-0}" = 1 ] && command -v apt-get >/dev/null 2>&1; then
    install_docker
fi

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
