#!/bin/sh
# Rebuild the vendored files of the esdc search page from the pinned npm packages.
#
#   web/build.sh      (or: make web)
#
# Installs exactly what package-lock.json pins (npm ci; needs node and npm), then copies
# Leaflet's built files (leaflet.js, leaflet.css, images/) and its licence into
# esdc/search/static/vendor/leaflet/. Those files are committed and shipped in the wheel:
# the page loads nothing from another site at run time.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest="$here/../esdc/search/static/vendor/leaflet"
cd "$here"
npm ci --no-audit --no-fund --ignore-scripts
src="$here/node_modules/leaflet"
version=$(node -p "require('$src/package.json').version")
rm -rf "$dest"
mkdir -p "$dest/images"
cp "$src/dist/leaflet.js" "$src/dist/leaflet.css" "$dest/"
cp "$src/dist/images/"*.png "$dest/images/"
cp "$src/LICENSE" "$dest/LICENSE"
echo "$version" > "$dest/VERSION"
echo "web/build.sh: Leaflet $version -> $dest"
