#!/usr/bin/env bash
# Install the Debian packages sandboxer needs, only those missing.
#
#   scripts/install-system-deps.sh demo     what `make demo` needs: local bubblewrap sandboxes
#   scripts/install-system-deps.sh test     everything the test suite starts (the default):
#                                           also sshd, dockerd with docker-compose, podman, runc
#   scripts/install-system-deps.sh PROFILE --list
#                                           print the profile's packages, install nothing
#
# Idempotent: a package is skipped when the command it provides is present.
# Not root: nothing is installed; the exact command to run is printed.
set -euo pipefail

usage() {
  echo "usage: $0 [demo|test] [--list]" >&2
  exit 2
}

profile="${1:-test}"
action="${2:-install}"

# "command:package" pairs.
DEMO=(
  "bwrap:bubblewrap"
  "nsenter:util-linux"
  "ps:procps"
  "pkill:procps"
  "ip:iproute2"
)
# The SSH backends' hosts and the compose engines the integration tests start.
TEST_ONLY=(
  "sshd:openssh-server"
  "rsync:rsync"
  "dockerd:docker.io"
  "docker-compose:docker-compose"
  "busybox:busybox-static"
  "podman:podman"
  "runc:runc"
  "catatonit:catatonit"   # podman's init for `init: true` services (only recommended by podman)
  # podman's network backend for compose egress allowlists (with CNI an internal network has
  # no gateway); the tests' containers.conf names it. Only recommended by podman.
  "/usr/lib/podman/netavark:netavark"
  "/usr/lib/podman/aardvark-dns:aardvark-dns"
  "curl:curl"             # tests/integration/test_http_api_docs.py runs docs/http-api.md's curl examples
  "jq:jq"                 # ... which pick ids out of answers with jq
  "nft:nftables"          # ext.local egress allowlists (tests/integration/test_local_egress.py)
  "keyctl:keyutils"       # keyrings kept apart by a sandbox's own uid (tests/integration/test_ext_local.py)
)

case "$profile" in
  demo) REQUIRED=("${DEMO[@]}") ;;
  test) REQUIRED=("${DEMO[@]}" "${TEST_ONLY[@]}") ;;
  *) usage ;;
esac

if [ "$action" = "--list" ]; then
  for pair in "${REQUIRED[@]}"; do echo "${pair#*:}"; done | awk '!seen[$0]++'
  exit 0
elif [ "$action" != "install" ]; then
  usage
fi

missing=()
for pair in "${REQUIRED[@]}"; do
  cmd="${pair%%:*}"
  pkg="${pair#*:}"
  # sbin directories are not always on a non-root PATH; a path names a helper off PATH.
  if [[ "$cmd" == /* ]]; then
    present() { [ -x "$cmd" ]; }
  else
    present() { PATH="$PATH:/usr/sbin:/sbin" command -v "$cmd" >/dev/null 2>&1; }
  fi
  if ! present; then
    case " ${missing[*]-} " in
      *" $pkg "*) ;;
      *) missing+=("$pkg") ;;
    esac
  fi
done

if [ "${#missing[@]}" -eq 0 ]; then
  echo "system deps ($profile): all present"
  exit 0
fi

install_command="apt-get install -y --no-install-recommends ${missing[*]}"

if [ "$EUID" -ne 0 ]; then
  echo "system deps ($profile) missing: ${missing[*]}" >&2
  echo "install them with:" >&2
  echo "  sudo apt-get update && sudo $install_command" >&2
  echo "then run make again" >&2
  exit 1
fi

if ! command -v apt-get >/dev/null 2>&1; then
  echo "system deps ($profile) missing: ${missing[*]}, and apt-get is not available;" \
       "install the equivalent packages with this system's package manager" >&2
  exit 1
fi

export DEBIAN_FRONTEND=noninteractive
echo "system deps ($profile): installing ${missing[*]}"
if [ -z "$(ls -A /var/lib/apt/lists 2>/dev/null | grep -v -e '^lock$' -e '^partial$' || true)" ]; then
  apt-get update
fi
if ! apt-get install -y --no-install-recommends "${missing[@]}"; then
  # Usually a stale or empty package index: refresh it once and retry.
  apt-get update
  apt-get install -y --no-install-recommends "${missing[@]}"
fi
