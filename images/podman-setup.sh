#!/usr/bin/env bash
# Podman for the msenc images and the container tests, on machines without a docker daemon.
#
#   images/podman-setup.sh               install/configure podman if needed, start a Docker-API socket (idle for
#                                        IDLE_S seconds, default 900, then it exits by itself) and print
#                                        `export DOCKER_HOST=unix://...` on stdout (logs go to stderr)
#   images/podman-setup.sh --no-service  install/configure only (what `podman build` / `podman run` need)
#
# What it does, each step only when needed (idempotent, ~0.1 s when nothing is to do):
#   1. apt-get installs podman and runc (root only; otherwise it says what to install);
#   2. writes /etc/containers/containers.conf.d/60-msenc.conf (root only) when this machine needs it:
#      runtime "runc" where the cgroup hierarchy is not the unified v2 one (crun refuses hybrid cgroups), and
#      default ulimits no higher than this machine's hard limits (podman's defaults of 1048576 fail with
#      "setrlimit: operation not permitted" where the process may not raise them);
#   3. starts `podman system service` on PODMAN_SOCK (default: /tmp/msenc-podman-$UID.sock) unless it answers.
set -euo pipefail

SOCK="${PODMAN_SOCK:-/tmp/msenc-podman-$(id -u).sock}"
IDLE_S="${IDLE_S:-900}"
CONF=/etc/containers/containers.conf.d/60-msenc.conf
log() { echo "[podman-setup] $*" >&2; }

if ! command -v podman >/dev/null 2>&1 || ! command -v runc >/dev/null 2>&1; then
  if [ "$(id -u)" != 0 ]; then
    log "podman and runc are needed: install them (Debian/Ubuntu: sudo apt-get install podman runc)"; exit 1
  fi
  log "installing podman and runc"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq podman runc >&2
fi

if [ "$(id -u)" = 0 ]; then
  lines=()
  hard_n=$(ulimit -Hn); [ "$hard_n" = unlimited ] && hard_n=1048576
  hard_u=$(ulimit -Hu); [ "$hard_u" = unlimited ] && hard_u=32768
  [ "$hard_n" -gt 1048576 ] && hard_n=1048576
  [ "$hard_u" -gt 32768 ] && hard_u=32768  # podman itself runs with at most 32768 processes
  containers="[containers]
default_ulimits = [\"nofile=${hard_n}:${hard_n}\", \"nproc=${hard_u}:${hard_u}\"]"
  engine=""
  if [ "$(stat -fc %T /sys/fs/cgroup/ 2>/dev/null)" != cgroup2fs ]; then
    engine="[engine]
runtime = \"runc\""
  fi
  want="# images/podman-setup.sh: what podman needs on this machine
${containers}
${engine}"
  if [ ! -f "$CONF" ] || [ "$(cat "$CONF")" != "$want" ]; then
    mkdir -p "$(dirname "$CONF")"
    printf '%s\n' "$want" > "$CONF"
    log "wrote $CONF"
  fi
fi

[ "${1:-}" = "--no-service" ] && exit 0

answers() { [ -S "$SOCK" ] && curl -fsS --max-time 3 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
if ! answers; then
  command -v curl >/dev/null 2>&1 || { log "curl is needed to check the socket"; exit 1; }
  rm -f "$SOCK"
  setsid nohup podman system service --time="$IDLE_S" "unix://$SOCK" >"${SOCK%.sock}.log" 2>&1 </dev/null &
  for _ in $(seq 1 100); do answers && break; sleep 0.1; done
  answers || { log "podman system service did not answer on $SOCK (log: ${SOCK%.sock}.log)"; exit 1; }
  log "podman API service on $SOCK (exits after ${IDLE_S} s idle)"
fi
echo "export DOCKER_HOST=unix://$SOCK"
