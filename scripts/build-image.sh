#!/usr/bin/env bash
# Build the Inzwa image offline (no registry): a Debian base from debootstrap + `docker import`,
# Python wheels from a wheelhouse built here with pip, then deploy/Dockerfile on that base.
#
#   scripts/build-image.sh            base (cached) + wheelhouse (cached) + inzwa:latest
#   INZWA_IMAGE=inzwa:dev scripts/build-image.sh
#
# Caches live in INZWA_BUILD_CACHE (default /var/cache/inzwa-build, else ~/.cache/inzwa-build):
# the base rootfs and the wheelhouse are keyed by what they contain. The image is tagged
# inzwa:ctx-KEY, KEY a hash of everything its build reads (Dockerfile, source, base image,
# wheelhouse): when that tag exists the build is skipped (a warm run costs a hash of the source),
# and otherwise Docker's layer cache rebuilds only what changed. Prints the times and the size.
set -euo pipefail
cd "$(dirname "$0")/.."

IMAGE="${INZWA_IMAGE:-inzwa:latest}"
SUITE="${INZWA_BASE_SUITE:-bookworm}"
MIRROR="${INZWA_DEBIAN_MIRROR:-http://deb.debian.org/debian}"
# What the runtime needs from Debian: Python 3.11 (+venv for the builder stage), espeak-ng
# (TTS phonemes, a separate GPL program, never linked), libgomp1 (llama.cpp, CTranslate2),
# redis-server (so the compose Redis service runs from this base when no registry is there).
PACKAGES="python3,python3-venv,espeak-ng,libgomp1,ca-certificates,passwd,redis-server"
# Portable llama.cpp build (design notes §5): a native build SIGILLs on CPUs that advertise AMX.
export CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON}"
PIP="${INZWA_PIP:-.venv/bin/pip}"
[ -x "$PIP" ] || PIP="pip3"

if [ -z "${INZWA_BUILD_CACHE:-}" ]; then
    if [ -w /var/cache ]; then INZWA_BUILD_CACHE=/var/cache/inzwa-build
    else INZWA_BUILD_CACHE="$HOME/.cache/inzwa-build"; fi
fi
mkdir -p "$INZWA_BUILD_CACHE"
base_key="$(printf '%s %s %s' "$SUITE" "$PACKAGES" "$(uname -m)" | sha256sum | cut -c1-12)"
BASE_IMAGE="${INZWA_BASE_IMAGE:-inzwa-base:$SUITE-$base_key}"

now() { echo "$SECONDS"; }
elapsed() { echo "$((SECONDS - $1))"; }

build_base() {
    if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
        echo "base: $BASE_IMAGE (cached)"; return
    fi
    command -v debootstrap >/dev/null || { echo "debootstrap is needed (apt-get install debootstrap)" >&2; exit 1; }
    local t0 rootfs
    t0="$(now)"
    rootfs="$INZWA_BUILD_CACHE/rootfs-$base_key"
    if [ ! -f "$rootfs/.inzwa-complete" ]; then
        rm -rf "$rootfs"
        debootstrap --variant=minbase --include="$PACKAGES" "$SUITE" "$rootfs" "$MIRROR" >"$rootfs.log" 2>&1 \
            || { tail -20 "$rootfs.log" >&2; exit 1; }
        # No package lists or caches in the image; apt works again after `apt-get update`.
        rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/*.bin "$rootfs"/var/cache/apt/archives/*.deb
        touch "$rootfs/.inzwa-complete"
    fi
    tar -C "$rootfs" --exclude=./.inzwa-complete -c . | docker import \
        -c 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin LANG=C.UTF-8' \
        -c 'CMD ["/bin/bash"]' - "$BASE_IMAGE" >/dev/null
    echo "base: $BASE_IMAGE built in $(elapsed "$t0") s"
}

# The dependencies the image installs (project + redis extra), not the whole pyproject.toml: its
# tool settings and the dev extras change often and must not cost a wheelhouse rebuild.
dependency_key() {
    python3 - <<'PY' 2>/dev/null || sha256sum pyproject.toml | cut -c1-12
import hashlib, json, tomllib
project = tomllib.load(open("pyproject.toml", "rb"))["project"]
wanted = [project.get("requires-python"), project["dependencies"],
          project.get("optional-dependencies", {}).get("redis", [])]
print(hashlib.sha256(json.dumps(wanted).encode()).hexdigest()[:12])
PY
}

build_wheelhouse() {
    # Keyed by the dependency list: a code change reuses it, a new dependency rebuilds it.
    local t0
    WHEELS_KEY="$(dependency_key)"
    WHEELS="$INZWA_BUILD_CACHE/wheelhouse-$WHEELS_KEY"
    t0="$(now)"
    if [ -f "$WHEELS/.complete" ]; then
        echo "wheelhouse: $WHEELS (cached)"; return
    fi
    rm -rf "$WHEELS" && mkdir -p "$WHEELS"
    echo "wheelhouse: building (pip wheel, cached wheels reused)"
    # pip reuses its cached llama-cpp-python wheel (built with the flags above).
    "$PIP" wheel --disable-pip-version-check -q -w "$WHEELS" '.[redis]' >"$WHEELS.log" 2>&1 \
        || { tail -20 "$WHEELS.log" >&2; exit 1; }
    rm -f "$WHEELS"/inzwa-*.whl  # the project itself is installed from the build context
    # Build backend for installing the project offline inside the image.
    # (async-timeout: redis needs it on Debian's Python 3.11.2, not on this host's newer one.)
    "$PIP" download --disable-pip-version-check -q -d "$WHEELS" --only-binary=:all: \
        'setuptools>=68' wheel 'async-timeout>=4.0.3' >>"$WHEELS.log" 2>&1 \
        || { tail -20 "$WHEELS.log" >&2; exit 1; }
    touch "$WHEELS/.complete"
    # Superseded wheelhouses go (164 MB each; rebuilding one from pip's cache takes seconds).
    find "$INZWA_BUILD_CACHE" -maxdepth 1 -name 'wheelhouse-*' ! -name "wheelhouse-$WHEELS_KEY*" \
        -exec rm -rf {} +
    echo "wheelhouse: $(ls "$WHEELS" | wc -l) wheels built in $(elapsed "$t0") s"
}

# Everything the image build reads: the files COPY takes from the context (as .dockerignore
# filters them; the wheelhouse by its key), the base image's id and the build's settings.
context_key() {
    local paths=(deploy/Dockerfile .dockerignore pyproject.toml common gateway orchestrator
                 asr_worker llm_worker tts_worker deploy bench)
    {
        find "${paths[@]}" -type f ! -path '*/__pycache__/*' ! -name '*.pyc' ! -name '*.wav' \
            ! -path 'deploy/docker/wheelhouse/*' ! -path 'bench/results/*' -print0 \
            | sort -z | xargs -0 sha256sum
        docker image inspect -f '{{.Id}}' "$BASE_IMAGE"
        echo "$WHEELS_KEY $CMAKE_ARGS"
    } | sha256sum | cut -c1-16
}

build_image() {
    local t0 key
    t0="$(now)"
    key="$(context_key)"
    if docker image inspect "inzwa:ctx-$key" >/dev/null 2>&1; then
        docker tag "inzwa:ctx-$key" "$IMAGE"
        echo "image: $IMAGE = inzwa:ctx-$key (cached, $(elapsed "$t0") s)"
        return
    fi
    # The build context must hold the wheels: hard links (same file system) or copies.
    find deploy/docker/wheelhouse -name '*.whl' -delete
    cp -l "$WHEELS"/*.whl deploy/docker/wheelhouse/ 2>/dev/null || cp "$WHEELS"/*.whl deploy/docker/wheelhouse/
    local log="$INZWA_BUILD_CACHE/image.log"
    # The builder stage tagged too, so its layers stay cached while it is current and go with it.
    { docker build -f deploy/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" --target builder \
          -t "inzwa-builder:ctx-$key" . \
      && docker build -f deploy/Dockerfile --build-arg BASE_IMAGE="$BASE_IMAGE" \
          -t "inzwa:ctx-$key" -t "$IMAGE" .; } >"$log" 2>&1 \
        || { tail -40 "$log" >&2; echo "image build failed (log: $log)" >&2; exit 1; }
    # Older ctx tags go, and with them the layers no current image shares (a code change leaves
    # ~300 MB behind otherwise); the labelled builder stages left untagged by older builds too.
    docker image ls --format '{{.Repository}}:{{.Tag}}' | grep -E '^inzwa(-builder)?:ctx-' \
        | grep -v -e "^inzwa:ctx-$key\$" -e "^inzwa-builder:ctx-$key\$" \
        | xargs -r docker image rm >/dev/null 2>&1 || true
    docker image prune -f --filter label=org.inzwa.stage=builder >/dev/null 2>&1 || true
    echo "image: $IMAGE = inzwa:ctx-$key built in $(elapsed "$t0") s, $(docker image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')"
}

build_base
build_wheelhouse
build_image
docker tag "$BASE_IMAGE" inzwa-base:latest  # the compose Redis service's offline image
