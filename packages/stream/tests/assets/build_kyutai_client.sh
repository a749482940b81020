#!/usr/bin/env bash
# Rebuild tests/assets/kyutai-client/ (Kyutai's official web client, built) from a checkout of the
# client/ folder of https://github.com/kyutai-labs/moshi (see kyutai-client/README.md for the commit).
#
#   packages/stream/tests/assets/build_kyutai_client.sh path/to/moshi/client
#
# Needs Node 20 and npm (the npm registry is used by `npm ci`). The client's sources are not changed:
# it is built in a scratch copy, as upstream builds it, and the placeholder demo images of its
# "Moshi Vision" gallery (twenty copies of one picture, unused in a voice conversation) are left out.
set -euo pipefail

if [ $# -ne 1 ] || [ ! -f "$1/package.json" ]; then
    echo "usage: $0 path/to/moshi/client  (the folder with package.json)" >&2
    exit 2
fi
client=$(cd "$1" && pwd)
out="$(cd "$(dirname "$0")" && pwd)/kyutai-client"
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cp -a "$client/." "$scratch/"
cd "$scratch"
rm -rf node_modules dist
npm ci --no-audit --no-fund
# The app refuses to start without VITE_QUEUE_API_PATH; upstream sets it to /api in .env.local.
VITE_QUEUE_API_PATH=/api npm run build
rm -rf dist/assets/images

mkdir -p "$out"
find "$out" -mindepth 1 ! -name README.md -delete
cp -a dist/. "$out/"
cp LICENSE "$out/LICENSE"
chmod -R u=rwX,go=rX "$out"
echo "built into $out ($(du -sh "$out" | cut -f1))"
