#!/usr/bin/env bash
# A Docker engine for the compose test (tests/test_compose.py), where the machine allows it:
# Debian's docker.io, docker-compose (v1; bookworm has no v2 plugin) and debootstrap (the offline
# base image) where missing, then dockerd started in the background when none answers (these
# machines have no systemd). Called by install-system-deps.sh.
#
# It never fails setup: without an engine the compose test skips, and the reason it prints is the
# line this script writes to $INZWA_DOCKER_STATUS (default ~/.cache/inzwa/docker-setup.txt):
# "ok: ..." or what went wrong (no root, apt-get failed, dockerd did not start, ...).
#   INZWA_INSTALL_DOCKER=0   leave Docker alone (the line says so)
#   INZWA_DOCKERD_WAIT_S=60  how long to wait for a started dockerd to answer `docker info`
set -uo pipefail

STATUS="${INZWA_DOCKER_STATUS:-${XDG_CACHE_HOME:-$HOME/.cache}/inzwa/docker-setup.txt}"
LOG="${INZWA_DOCKERD_LOG:-/tmp/inzwa-dockerd.log}"
WAIT_S="${INZWA_DOCKERD_WAIT_S:-60}"
sudo=""

# One line into the status file (and on stderr); the last one written is the verdict.
note() {
    mkdir -p "$(dirname "$STATUS")" 2>/dev/null
    printf '%s\n' "$*" >"$STATUS" 2>/dev/null
    echo "docker setup: $*" >&2
}

# Root, or a sudo that asks no password (CI runs as root; a developer may have neither).
become_root() {
    if [ "$(id -u)" = 0 ]; then return 0; fi
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then sudo="sudo -n"; return 0; fi
    note "not root and no passwordless sudo: cannot install or start Docker (run setup as root, or start dockerd yourself)"
    return 1
}

has_compose() {
    { command -v docker >/dev/null 2>&1 && docker compose version >/dev/null 2>&1; } \
        || command -v docker-compose >/dev/null 2>&1
}

install_missing() {
    local missing=()
    command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
    has_compose || missing+=(docker-compose)
    command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
    [ "${#missing[@]}" -eq 0 ] && return 0
    if ! command -v apt-get >/dev/null 2>&1; then
        note "no apt-get here: install ${missing[*]} yourself for the compose test"
        return 1
    fi
    echo "docker setup: installing ${missing[*]} (apt-get)" >&2
    local out="/tmp/inzwa-docker-apt.log"
    if ! { timeout 300 $sudo apt-get update -qq \
           && DEBIAN_FRONTEND=noninteractive timeout 900 $sudo apt-get install -y -qq "${missing[@]}"; } \
           >"$out" 2>&1; then
        note "apt-get install ${missing[*]} failed: $(tail -3 "$out" | tr '\n' ' ' | cut -c1-300) (log: $out)"
        return 1
    fi
}

engine_ok() { $sudo timeout 20 docker info >/dev/null 2>&1; }

# dockerd in the background, detached from make; a pid file left by a dockerd that was killed
# (a machine snapshot, a killed session) would make the new one refuse to start.
start_dockerd() {
    local pidfile=/var/run/docker.pid
    if [ -f "$pidfile" ] && ! $sudo kill -0 "$(cat "$pidfile")" 2>/dev/null; then
        $sudo rm -f "$pidfile"
    fi
    echo "docker setup: starting dockerd (log: $LOG)" >&2
    local pid waited=0
    pid="$($sudo sh -c "setsid nohup dockerd >'$LOG' 2>&1 </dev/null & echo \$!")"
    while [ "$waited" -lt "$WAIT_S" ]; do
        engine_ok && return 0
        if ! $sudo kill -0 "$pid" 2>/dev/null; then
            note "dockerd exited at start: $(tail -3 "$LOG" 2>/dev/null | tr '\n' ' ' | cut -c1-300) (log: $LOG)"
            return 1
        fi
        sleep 2
        waited=$((waited + 2))
    done
    note "dockerd did not answer \`docker info\` within ${WAIT_S} s: $(tail -3 "$LOG" 2>/dev/null | tr '\n' ' ' | cut -c1-300) (log: $LOG)"
    return 1
}

main() {
    if [ "${INZWA_INSTALL_DOCKER:-1}" = 0 ]; then
        note "INZWA_INSTALL_DOCKER=0: setup left Docker alone"
        return 0
    fi
    # Already usable as this user (a developer's own engine): nothing to install or start.
    if engine_ok && has_compose && command -v debootstrap >/dev/null 2>&1; then
        note "ok: $(docker version -f 'engine {{.Server.Version}}' 2>/dev/null) running"
        return 0
    fi
    become_root || return 0
    install_missing || return 0
    if ! engine_ok; then start_dockerd || return 0; fi
    note "ok: $($sudo docker version -f 'engine {{.Server.Version}}' 2>/dev/null) running"
}

main
exit 0
