#!/usr/bin/env bash
# A Debian bookworm + Python 3.11 base image made on this machine, for machines that reach no container registry
# (`make image-local`, the container tests): debootstrap from the machine's own Debian mirror, imported into
# podman. Any image with python3 >= 3.11 and its venv module would do as images/Dockerfile's BASE_IMAGE.
#
#   images/base-image.sh [IMAGE]     default localhost/msenc-python-base:bookworm; does nothing when IMAGE
#                                    exists (FORCE=1 rebuilds). Root (debootstrap). About 1-2 min.
set -euo pipefail

IMAGE="${1:-localhost/msenc-python-base:bookworm}"
SUITE="${SUITE:-bookworm}"
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
log() { echo "[base-image] $*" >&2; }

bash "$HERE/podman-setup.sh" --no-service
if [ "${FORCE:-0}" != 1 ] && podman image exists "$IMAGE"; then
  log "$IMAGE exists (FORCE=1 to rebuild)"; exit 0
fi
[ "$(id -u)" = 0 ] || { log "debootstrap needs root"; exit 1; }
if ! command -v debootstrap >/dev/null 2>&1; then
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >&2
fi

# the Debian mirror apt uses here (deb822 .sources first, then sources.list), never the security archive
mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | awk '$1 == "URIs:" {for (i = 2; i <= NF; i++) if ($i !~ /security/) {print $i; exit}}')
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && !/security/ {for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) {print $i; exit}}' /etc/apt/sources.list 2>/dev/null)
[ -n "$mirror" ] || { log "no Debian mirror in /etc/apt/sources.list(.d)"; exit 1; }

work=$(mktemp -d /var/tmp/msenc-base.XXXXXX)
trap 'rm -rf "$work"' EXIT
log "debootstrap $SUITE from $mirror"
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates "$SUITE" "$work/root" "$mirror" \
  >"$work/debootstrap.log" 2>&1 || { tail -20 "$work/debootstrap.log" >&2; exit 1; }
chroot "$work/root" apt-get clean
rm -rf "$work/root"/var/lib/apt/lists/* "$work/root"/usr/share/doc/* "$work/root"/usr/share/man/* "$work/root"/tmp/*
tar -C "$work/root" --numeric-owner -c . | podman import --change 'CMD ["python3"]' -q - "$IMAGE" >/dev/null
podman run --rm "$IMAGE" python3 -c 'import sys, venv; assert sys.version_info >= (3, 11)'
log "built $IMAGE ($(podman image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1 / 1e6}'))"
