#!/usr/bin/env bash
# Install the Debian packages sandboxer's tests and demo need, only those missing.
# Idempotent: every package is skipped when the command it provides is present.
set -euo pipefail

# "command:package" pairs. Later work adds e.g. podman:podman.
REQUIRED=(
  "bwrap:bubblewrap"
  "nsenter:util-linux"
  "ps:procps"
  "pkill:procps"
  "ip:iproute2"
  "sshd:openssh-server"
  "rsync:rsync"
  "dockerd:docker.io"
  "docker-compose:docker-compose"
  "busybox:busybox-static"
)

missing=()
for pair in "${REQUIRED[@]}"; do
  cmd="${pair%%:*}"
  pkg="${pair#*:}"
  # sbin directories are not always on a non-root PATH.
  if ! PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; then
    case " ${missing[*]-} " in
      *" $pkg "*) ;;
      *) missing+=("$pkg") ;;
    esac
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "system deps: all present"
  exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
  echo "system deps missing: ${missing[*]}" >&2
  echo "install them with:" >&2
  echo "  sudo apt-get install -y ${missing[*]}" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system deps missing: ${missing[*]}, and apt-get is not available; install them by hand" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "system deps: installing ${missing[*]}"
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true)" ]; then
  apt-get update
fi
if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
  # Usually a stale or empty package index: refresh it once and retry.
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
