#!/usr/bin/env bash
# Re-fetches the vendored UI libraries from the npm registry (see README.md). Needs npm.
set -euo pipefail
UPLOT=1.6.32
DAGRE=3.1.3
GRAPHLIB=4.0.6
here=$(cd "$(dirname "$0")" && pwd)
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
for p in "uplot@$UPLOT" "@dagrejs/dagre@$DAGRE" "@dagrejs/graphlib@$GRAPHLIB"; do
  want=$(npm view "$p" dist.integrity)
  file=$(npm pack --silent "$p")
  got="sha512-$(openssl dgst -sha512 -binary "$file" | base64 -w0)"
  [ "$want" = "$got" ] || { echo "integrity mismatch for $p: $got != $want" >&2; exit 1; }
  mkdir -p "${file%.tgz}" && tar xzf "$file" -C "${file%.tgz}"
done
cp uplot-$UPLOT/package/dist/uPlot.iife.min.js uplot-$UPLOT/package/dist/uPlot.min.css "$here/"
grep -v '^//# sourceMappingURL=' dagrejs-dagre-$DAGRE/package/dist/dagre.min.js > "$here/dagre.min.js"
cp uplot-$UPLOT/package/LICENSE "$here/LICENSE.uplot"
cp dagrejs-dagre-$DAGRE/package/LICENSE "$here/LICENSE.dagre"
cp dagrejs-graphlib-$GRAPHLIB/package/LICENSE "$here/LICENSE.graphlib"
echo "updated: uplot $UPLOT, dagre $DAGRE, graphlib $GRAPHLIB"
