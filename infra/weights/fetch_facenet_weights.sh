#!/usr/bin/env bash
# Download the FaceNet (InceptionResnetV1, VGGFace2) weights on a machine that can reach
# GitHub, and print the SHA-256 and the settings the workers need. See README.md here.
#
#   infra/weights/fetch_facenet_weights.sh OUTPUT_DIR [EXPECTED_SHA256]
#
# OUTPUT_DIR       where the .pt file is written (created if missing).
# EXPECTED_SHA256  optional: a hash recorded earlier (another site, a previous download);
#                  the file is refused and removed if it differs.
# FACENET_WEIGHTS_URL (environment) overrides the download address, e.g. an internal mirror.
set -euo pipefail

readonly NAME="20180402-114759-vggface2.pt"
readonly DEFAULT_URL="https://github.com/timesler/facenet-pytorch/releases/download/v2.2.9/${NAME}"
readonly URL="${FACENET_WEIGHTS_URL:-$DEFAULT_URL}"

usage() {
    echo "usage: $0 OUTPUT_DIR [EXPECTED_SHA256]" >&2
    exit 2
}

sha256_of() {
    if command -v sha256sum >/dev/null 2>&1; then
        sha256sum "$1" | cut -d' ' -f1
    else
        shasum -a 256 "$1" | cut -d' ' -f1
    fi
}

[ $# -ge 1 ] && [ $# -le 2 ] || usage
out_dir=$1
expected=$(printf '%s' "${2:-}" | tr 'A-F' 'a-f')
if [ -n "$expected" ] && ! [[ "$expected" =~ ^[0-9a-f]{64}$ ]]; then
    echo "error: EXPECTED_SHA256 must be 64 hex digits" >&2
    exit 2
fi
command -v curl >/dev/null 2>&1 || { echo "error: curl is required" >&2; exit 1; }

mkdir -p "$out_dir"
target="$out_dir/$NAME"

downloaded=0
if [ -e "$target" ]; then
    echo "$target already exists: not downloading again, hashing it" >&2
else
    tmp=$(mktemp "$out_dir/.${NAME}.XXXXXX")
    trap 'rm -f "$tmp"' EXIT
    echo "downloading $URL" >&2
    curl --fail --location --retry 3 --show-error --progress-bar --output "$tmp" "$URL"
    mv "$tmp" "$target"
    trap - EXIT
    downloaded=1
fi
chmod 0444 "$target"

actual=$(sha256_of "$target")
if [ -n "$expected" ] && [ "$actual" != "$expected" ]; then
    echo "error: $target has SHA-256 $actual, expected $expected" >&2
    if [ "$downloaded" = 1 ]; then
        rm -f "$target"
        echo "removed $target" >&2
    fi
    exit 1
fi

cat <<EOF
$actual  $NAME

Copy $target into the directory mounted at /models on every worker host
(MODELS_DIR in infra/.env, ./models next to compose.yaml by default), then set in infra/.env:

BODYCAM_PIPELINE__FACENET_WEIGHTS=/models/$NAME
BODYCAM_PIPELINE__FACENET_WEIGHTS_SHA256=$actual
EOF
