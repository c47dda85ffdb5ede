#!/bin/sh
# Build a wheelhouse for an offline install: the project's own wheel plus a wheel of every
# runtime dependency for the target platform, so that on the truck
#
#   sudo systemd/install.sh --wheelhouse /media/usb/wheelhouse
#
# runs `pip install --no-index --find-links DIR truckgw` with nothing left to build (no
# setuptools, no compiler, no network). Run it on any machine with network access and
# Python >= 3.11:
#
#   deploy/wheelhouse.sh                       # Raspberry Pi OS 64-bit: aarch64, CPython 3.11
#   deploy/wheelhouse.sh --native              # this machine's platform and Python (tests)
#   deploy/wheelhouse.sh -o DIR --python 3.12  # another target Python
#
# Options:
#   -o, --output DIR   where the wheels go (default: ./wheelhouse)
#   --platform TAG     a pip --platform tag; repeatable (default: manylinux_2_17_aarch64,
#                      manylinux2014_aarch64, manylinux_2_28_aarch64, linux_aarch64)
#   --python X.Y       target CPython version (default 3.11: Bookworm's)
#   --native           for this machine's platform and Python instead of the target
# Environment: PYTHON (default python3) runs pip; SRC the project (default: this checkout).
set -eu

HERE=$(cd "$(dirname "$0")" && pwd)
SRC=${SRC:-$(dirname "$HERE")}
PYTHON=${PYTHON:-python3}
OUT=wheelhouse
PYVER=3.11
NATIVE=0
PLATFORMS=""

say() { printf 'truckgw-wheelhouse: %s\n' "$*"; }
die() { printf 'truckgw-wheelhouse: error: %s\n' "$*" >&2; exit 1; }

while [ $# -gt 0 ]; do
    case "$1" in
        -o|--output) [ $# -ge 2 ] || die "$1 needs a folder"; OUT=$2; shift 2 ;;
        --platform) [ $# -ge 2 ] || die "$1 needs a tag"; PLATFORMS="$PLATFORMS $2"; shift 2 ;;
        --python) [ $# -ge 2 ] || die "$1 needs X.Y"; PYVER=$2; shift 2 ;;
        --native) NATIVE=1; shift ;;
        -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
        *) die "unknown option $1 (see --help)" ;;
    esac
done
[ -n "$PLATFORMS" ] || PLATFORMS="manylinux_2_17_aarch64 manylinux2014_aarch64 manylinux_2_28_aarch64 linux_aarch64"

mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
pip() { "$PYTHON" -m pip --disable-pip-version-check "$@"; }

# 1. the project's own wheel (pure Python: one wheel serves every platform). Built in a
# copy so the checkout is not littered with build/ and *.egg-info.
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
for part in pyproject.toml README.md LICENSE gateway drivers buffer sim config; do
    [ -e "$SRC/$part" ] && cp -R "$SRC/$part" "$work/"
done
pip wheel --quiet --no-deps --wheel-dir "$OUT" "$work"
wheel=$(ls -t "$OUT"/truckgw-*.whl | head -n 1)
say "built $(basename "$wheel")"

# 2. every runtime dependency as a binary wheel for the target (never an sdist: the truck
# has no compiler and no build backend)
if [ "$NATIVE" = 1 ]; then
    pip download --quiet --only-binary=:all: --dest "$OUT" "$wheel"
else
    set --
    for p in $PLATFORMS; do set -- "$@" --platform "$p"; done
    abi="cp$(echo "$PYVER" | tr -d .)"
    pip download --quiet --only-binary=:all: --implementation cp --python-version "$PYVER" \
        --abi "$abi" --abi abi3 --abi none "$@" --dest "$OUT" "$wheel"
fi
say "$(ls "$OUT"/*.whl | wc -l) wheels in $OUT"
say "copy $OUT to the truck, then: sudo systemd/install.sh --wheelhouse DIR"
