#!/usr/bin/env bash
# Emulated Raspberry Pi: an arm64 Debian rootfs run through qemu-user-static, with the aarch64
# ai-edge-litert wheel and numpy, running a converted model and scripts/rpi_kws.py on test audio,
# compared with the same on x86 (int8 outputs equal, or within 1 LSB where XNNPACK differs).
#
#   scripts/emulate_aarch64.sh MODEL.tflite [WAV]      # needs root; first run builds the rootfs
#
# The rootfs is cached under build/aarch64/ (EDGEASR_AARCH64_DIR overrides). Debian trixie:
# ai-edge-litert 2.x ships aarch64 wheels for CPython 3.12/3.13 only, bookworm has 3.11.
# The wheels are installed from the host with the host's pip (same index and certificates as
# every other install here) into the rootfs with --target, so nothing is fetched from inside.
# /proc is mounted into the chroot for the run; /sys is not (binding it breaks the host).
# The comparison itself is `python -m edgeasr.device --chroot ROOTFS`, the code path of
# `edgeasr device-check --ssh/--adb` with the chroot as transport.
set -euo pipefail
MODEL=${1:?usage: scripts/emulate_aarch64.sh MODEL.tflite [WAV]}
WAV=${2:-}
for given in "$MODEL" ${WAV:+"$WAV"}; do      # paths are the caller's: checked and made absolute before cd
    [[ -f "$given" ]] || { echo "emulate_aarch64.sh: $given: no such file" >&2; exit 1; }
done
MODEL=$(realpath "$MODEL")
WAV=${WAV:+$(realpath "$WAV")}
cd "$(dirname "$0")/.."

WORK=${EDGEASR_AARCH64_DIR:-build/aarch64}
ROOTFS=$WORK/rootfs
SUITE=${EDGEASR_AARCH64_SUITE:-trixie}
PYTHON_VERSION=3.13
MIRROR=${EDGEASR_DEBIAN_MIRROR:-$(sed -n 's/^URIs: *\(http[^ ]*debian\)$/\1/p' /etc/apt/sources.list.d/debian.sources 2>/dev/null | head -n1)}
MIRROR=${MIRROR:-http://deb.debian.org/debian}
PY=${PYTHON:-.venv/bin/python}
LITERT_VERSION=$("$PY" -c "from importlib.metadata import version; print(version('ai-edge-litert'))")
NUMPY_VERSION=$("$PY" -c "import numpy; print(numpy.__version__)")

if [ "$(id -u)" != 0 ]; then
  echo "emulate_aarch64.sh: needs root (debootstrap, chroot, binfmt_misc)" >&2
  exit 77
fi

ensure_host_packages() {
  local missing=()
  command -v debootstrap >/dev/null || missing+=(debootstrap)
  [ -e /usr/bin/qemu-aarch64-static ] || missing+=(qemu-user-static)
  command -v update-binfmts >/dev/null || missing+=(binfmt-support)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "installing ${missing[*]}" >&2
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
  [ -e /proc/sys/fs/binfmt_misc/register ] || mount -t binfmt_misc binfmt_misc /proc/sys/fs/binfmt_misc
  update-binfmts --enable qemu-aarch64 >/dev/null 2>&1 || true
  if [ ! -e /proc/sys/fs/binfmt_misc/qemu-aarch64 ]; then
    echo "emulate_aarch64.sh: qemu-aarch64 is not registered with binfmt_misc" >&2
    exit 77
  fi
}

build_rootfs() {
  [ -e "$ROOTFS/.edgeasr-complete" ] && return
  local started=$SECONDS
  rm -rf "$ROOTFS"
  mkdir -p "$ROOTFS"
  echo "debootstrap $SUITE arm64 from $MIRROR (cached in $ROOTFS afterwards)" >&2
  debootstrap --arch=arm64 --variant=minbase --include=python3 "$SUITE" "$ROOTFS" "$MIRROR" >"$WORK/debootstrap.log" 2>&1 \
    || { tail -n 20 "$WORK/debootstrap.log" >&2; exit 1; }
  touch "$ROOTFS/.edgeasr-complete"
  echo "rootfs built in $((SECONDS - started)) s" >&2
}

install_wheels() {
  local target=$ROOTFS/opt/edgeasr-site stamp="ai-edge-litert==$LITERT_VERSION numpy==$NUMPY_VERSION"
  [ "$(cat "$target/.stamp" 2>/dev/null)" = "$stamp" ] && return
  rm -rf "$target"
  "$PY" -m pip install --quiet --target "$target" --only-binary=:all: --python-version "$PYTHON_VERSION" \
    --platform manylinux_2_27_aarch64 --platform manylinux_2_17_aarch64 --platform manylinux2014_aarch64 \
    $stamp
  echo "$stamp" >"$target/.stamp"
}

ensure_host_packages
mkdir -p "$WORK"
build_rootfs
install_wheels
mountpoint -q "$ROOTFS/proc" || mount -t proc proc "$ROOTFS/proc"
trap 'umount "$ROOTFS/proc" 2>/dev/null || true' EXIT
"$PY" -m edgeasr.device --chroot "$ROOTFS" "$MODEL" ${WAV:+--wav "$WAV"}
