#!/usr/bin/env bash
# Make a Docker engine and envhub's local base image available, then print the image to use.
#
#   eval "$(bash scripts/setup-docker.sh)"     # exports ENVHUB_BASE_IMAGE=envhub-base:bookworm
#
# Idempotent and fast when everything already exists:
#   1. installs Debian's docker.io and debootstrap when `dockerd` / `debootstrap` are missing (root);
#   2. starts dockerd in the background (as root) when no engine answers, and waits for it;
#   3. builds the base image once with debootstrap (minbase + python3, venv, pip) and
#      `docker import`s it as envhub-base:bookworm; reuses it when it is already there.
# Everything goes to stderr except the final `export ENVHUB_BASE_IMAGE=...` line on stdout.
# Environment: ENVHUB_BASE_IMAGE_TAG (default envhub-base:bookworm), ENVHUB_DEBIAN_MIRROR
# (default: the first deb.debian.org-style URI of apt's sources, else http://deb.debian.org/debian),
# ENVHUB_DOCKERD_LOG (default /var/log/envhub-dockerd.log).
set -euo pipefail

TAG="${ENVHUB_BASE_IMAGE_TAG:-envhub-base:bookworm}"
LOG="${ENVHUB_DOCKERD_LOG:-/var/log/envhub-dockerd.log}"
say() { echo "setup-docker: $*" >&2; }
die() { say "error: $*"; exit 1; }

is_root() { [ "$(id -u)" = 0 ]; }

# 1. packages
missing=()
command -v dockerd >/dev/null 2>&1 || missing+=(docker.io)
command -v debootstrap >/dev/null 2>&1 || missing+=(debootstrap)
if ! docker info >/dev/null 2>&1 || ! docker image inspect "$TAG" >/dev/null 2>&1; then
  if [ "${#missing[@]}" -gt 0 ]; then
    is_root || die "missing ${missing[*]}; run this script as root or install them (apt-get install ${missing[*]})"
    say "installing ${missing[*]} (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >&2
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
fi

# 2. engine
if ! docker info >/dev/null 2>&1; then
  if [ -n "${DOCKER_HOST:-}" ]; then
    die "DOCKER_HOST=$DOCKER_HOST does not answer; start that engine or unset DOCKER_HOST"
  fi
  is_root || die "no Docker engine answers and starting one needs root; start dockerd yourself"
  command -v dockerd >/dev/null 2>&1 || die "dockerd not found after install"
  # A dockerd killed without its cleanup (a session's end) leaves its pid file, which stops the next one.
  for pidfile in /var/run/docker.pid /var/run/docker/containerd/containerd.pid; do
    if [ -f "$pidfile" ]; then
      old="$(cat "$pidfile" 2>/dev/null || true)"
      # Stale unless that pid is still a docker daemon (pids are reused by other processes).
      comm="$(cat "/proc/$old/comm" 2>/dev/null || true)"
      if [ -z "$old" ] || { [ "$comm" != dockerd ] && [ "$comm" != containerd ]; }; then
        say "removing stale $pidfile"
        rm -f "$pidfile"
      fi
    fi
  done
  say "starting dockerd (log: $LOG)"
  # Containers run with --network none, so the engine needs no bridge nor iptables rules.
  nohup dockerd --bridge=none --iptables=false --ip6tables=false >>"$LOG" 2>&1 </dev/null &
  dockerd_pid=$!
  for _ in $(seq 1 120); do
    docker info >/dev/null 2>&1 && break
    kill -0 "$dockerd_pid" 2>/dev/null || { tail -n 5 "$LOG" >&2 || true; die "dockerd exited at start (see $LOG)"; }
    sleep 0.5
  done
  docker info >/dev/null 2>&1 || { tail -n 20 "$LOG" >&2 || true; die "dockerd did not answer within 60 s (see $LOG)"; }
  say "dockerd is up"
fi

# 3. base image
if docker image inspect "$TAG" >/dev/null 2>&1; then
  say "base image $TAG already present"
else
  command -v debootstrap >/dev/null 2>&1 || die "debootstrap is needed to build $TAG (apt-get install debootstrap)"
  mirror="${ENVHUB_DEBIAN_MIRROR:-}"
  if [ -z "$mirror" ]; then
    mirror="$(grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
      | head -n1 | awk '{print $2}' || true)"
    mirror="${mirror:-http://deb.debian.org/debian}"
  fi
  root="$(mktemp -d /tmp/envhub-base.XXXXXX)"
  trap 'rm -rf "$root"' EXIT
  say "debootstrap bookworm from $mirror (a few minutes, once)"
  debootstrap --variant=minbase --include=python3,python3-venv,python3-pip bookworm "$root" "$mirror" >&2
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  say "importing $TAG"
  tar -C "$root" -c . | docker import -c 'CMD ["/usr/bin/python3"]' - "$TAG" >&2
  rm -rf "$root"
  trap - EXIT
fi

echo "export ENVHUB_BASE_IMAGE=$TAG"
