#!/usr/bin/env bash
# Refresh the dashboard's vendored front-end files from the npm registry (npm pack: the
# published tarballs, no install scripts run), pinned here. Writes static/vendor/ and
# static/vendor/VENDOR.md (name, version, license, the npm integrity hash, each file's SHA-256).
# Nothing in the dashboard is loaded from anywhere else at run time.
#
#   tunnelmesh_admin/vendor/refresh.sh        (needs npm and python3)
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
out="$here/src/tunnelmesh_admin/static/vendor"
# name@version  file-in-package:destination ...
packages=(
  "uplot@1.6.32 dist/uPlot.iife.min.js:uPlot.iife.min.js dist/uPlot.min.css:uPlot.min.css LICENSE:LICENSE.uplot"
  "world-atlas@2.0.2 land-110m.json:land-110m.json LICENSE:LICENSE.world-atlas"
)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
mkdir -p "$out"
{
  echo "# Vendored front-end files"
  echo
  echo "Written by \`tunnelmesh_admin/vendor/refresh.sh\` (do not edit by hand). Served from the"
  echo "dashboard's own origin; nothing is fetched from elsewhere."
  echo
  echo "| package | version | license | npm integrity | file | sha256 |"
  echo "|---|---|---|---|---|---|"
} > "$tmp/VENDOR.md"
for entry in "${packages[@]}"; do
  read -r spec files <<<"$entry"
  (cd "$tmp" && npm pack --silent "$spec" > pack.out)
  tarball="$tmp/$(tail -n1 "$tmp/pack.out")"
  rm -rf "$tmp/package" && tar xzf "$tarball" -C "$tmp"
  read -r name version license < <(python3 -c '
import json, sys
p = json.load(open(sys.argv[1]))
print(p["name"], p["version"], p.get("license", "?"))' "$tmp/package/package.json")
  integrity=$(cd "$tmp" && npm view "$spec" dist.integrity)
  for f in $files; do
    src=${f%%:*}; dst=${f##*:}
    cp "$tmp/package/$src" "$out/$dst"
    sum=$(sha256sum "$out/$dst" | cut -d' ' -f1)
    echo "| $name | $version | $license | \`${integrity:0:20}…\` | $dst | \`$sum\` |" >> "$tmp/VENDOR.md"
  done
done
cp "$tmp/VENDOR.md" "$out/VENDOR.md"
echo "vendor: wrote $(ls "$out" | wc -l) files to $out"
