#!/usr/bin/env bash
# Build an msenc image with docker or podman, whichever works here (used by `make image` and the tests).
#
#   images/build.sh [IMAGE]                 default IMAGE: localhost/msenc-python:dev
# Environment:
#   DOCKERFILE       images/Dockerfile (CPU, default) or images/Dockerfile.cuda
#   BASE_IMAGE       build argument of the Dockerfile (its default when empty)
#   TORCH_WHEEL      a local torch wheel to install instead of downloading one (it is hard-linked or
#                    copied into images/wheels/, which the Dockerfile offers to pip); TORCH_SPEC then
#                    defaults to that exact version and TORCH_INDEX_URL to none
#   TORCH_SPEC, TORCH_INDEX_URL   build arguments, passed when set
#   ENGINE           docker | podman (default: podman if installed, else docker)
#   PIP_CERT         CA bundle for pip inside the build (default: pip's `cert` setting), passed as the
#                    build secret `pipcert`, never stored in the image
#   BUILD_ARGS       more arguments for `<engine> build`
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

IMAGE="${1:-localhost/msenc-python:dev}"
DOCKERFILE="${DOCKERFILE:-images/Dockerfile}"
log() { echo "[images/build.sh] $*" >&2; }

if [ -z "${ENGINE:-}" ]; then
  if command -v podman >/dev/null 2>&1; then ENGINE=podman
  elif command -v docker >/dev/null 2>&1; then ENGINE=docker
  else log "neither podman nor docker is installed"; exit 1; fi
fi

# podman on a machine that needs a runtime/ulimit setting for RUN steps: images/podman-setup.sh provides it
if [ "$ENGINE" = podman ]; then bash images/podman-setup.sh --no-service; fi

args=(build -f "$DOCKERFILE" -t "$IMAGE")
[ -n "${BASE_IMAGE:-}" ] && args+=(--build-arg "BASE_IMAGE=$BASE_IMAGE")

# images/wheels/ is this script's staging folder: only the torch wheel of THIS build may lie there (a CPU
# wheel left from an earlier build would win over PyPI's CUDA torch in a CUDA build: +cpu sorts higher).
find images/wheels -maxdepth 1 -name 'torch-*.whl' ! -name "$(basename "${TORCH_WHEEL:-none}")" -delete
if [ -n "${TORCH_WHEEL:-}" ]; then
  [ -f "$TORCH_WHEEL" ] || { log "TORCH_WHEEL=$TORCH_WHEEL does not exist"; exit 1; }
  whl="images/wheels/$(basename "$TORCH_WHEEL")"
  [ -f "$whl" ] || ln "$TORCH_WHEEL" "$whl" 2>/dev/null || cp "$TORCH_WHEEL" "$whl"
  # torch-2.13.0+cpu-cp311-... -> torch==2.13.0+cpu
  version="$(basename "$TORCH_WHEEL" | cut -d- -f2)"
  TORCH_SPEC="${TORCH_SPEC:-torch==$version}"
  TORCH_INDEX_URL="${TORCH_INDEX_URL-}"
fi
[ -n "${TORCH_SPEC:-}" ] && args+=(--build-arg "TORCH_SPEC=$TORCH_SPEC")
[ -n "${TORCH_INDEX_URL+set}" ] && args+=(--build-arg "TORCH_INDEX_URL=$TORCH_INDEX_URL")

cert="${PIP_CERT:-$(pip config get global.cert 2>/dev/null || true)}"
if [ -n "$cert" ] && [ -f "$cert" ]; then args+=(--secret "id=pipcert,src=$cert"); fi

# docker needs BuildKit for RUN --mount; podman (buildah) supports it natively.
[ "$ENGINE" = docker ] && export DOCKER_BUILDKIT=1
# shellcheck disable=SC2206
[ -n "${BUILD_ARGS:-}" ] && args+=($BUILD_ARGS)

log "$ENGINE ${args[*]} ."
t0=$(date +%s)
"$ENGINE" "${args[@]}" .
size=$("$ENGINE" image inspect -f '{{.Size}}' "$IMAGE" | awk '{printf "%.0f MB", $1/1e6}')
log "built $IMAGE in $(( $(date +%s) - t0 )) s ($size)"
