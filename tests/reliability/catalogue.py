"""The catalogue of hostile inputs: what is fed, what must come back.

Each :class:`Case` is one bad input a user (or an attacker) can feed esdc, across
recipes, source files, CLI arguments, embedding/index files and HTTP requests, with
the exit code (CLI) or HTTP status that must come back and fragments the message must
contain (``{ws}`` is the case's working folder, ``{recipe}`` its ``recipe.yaml``).
``tests/reliability/test_hostile_catalogue.py`` builds and runs every case and checks,
besides code and message, that no traceback is printed and that nothing on disk
changed (the case's folder and the shared cube, byte for byte).

``python -m tests.reliability.catalogue > docs/HOSTILE_INPUTS.md`` writes the table
(a test keeps the committed file equal to :func:`markdown`).
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["CASES", "CATEGORIES", "Case", "markdown"]

#: Categories in the order of the table.
CATEGORIES = ("recipe", "source file", "CLI argument", "cube / embeddings / index", "HTTP request")


@dataclass(frozen=True)
class Case:
    """One hostile input.

    Attributes
    ----------
    id : str
        Unique name; the test's parameter id.
    category : str
        One of :data:`CATEGORIES`.
    fed : str
        What is fed, in words (Markdown).
    run : str
        The command or request that receives it.
    expect : int
        CLI exit code, or HTTP status.
    needles : tuple of str
        Fragments the message must contain.
    """

    id: str
    category: str
    fed: str
    run: str
    expect: int
    needles: tuple[str, ...]


BUILD = "esdc build {recipe} --out {ws}/out.zarr --no-fetch"
SEARCH_COPY = "esdc search {ws}/cube.zarr --lat 0 --lon 0"

CASES: tuple[Case, ...] = (
    # ------------------------------------------------------------------ recipes
    Case("recipe-python-object-tag", "recipe",
         "`name: !!python/object/apply:os.system [\"touch pwned\"]` (code execution tag)",
         BUILD, 2, ("{recipe}", "malformed YAML", "line 1",
                    "python/object/apply:os.system")),
    Case("recipe-python-name-tag", "recipe",
         "`title: !!python/name:builtins.eval ''` in a valid recipe", BUILD, 2,
         ("{recipe}", "malformed YAML", "python/name:builtins.eval")),
    Case("recipe-billion-laughs", "recipe",
         "10 levels of YAML anchors x 9 aliases (\"billion laughs\", 3.9e9 leaves if "
         "expanded) as `title`",
         BUILD, 2, ("{recipe}", "title", "valid string")),
    Case("recipe-deep-nesting", "recipe", "100,000 nested `[` brackets", BUILD, 2,
         ("{recipe}", "nested too deeply")),
    Case("recipe-not-utf8", "recipe", "binary bytes (not UTF-8) in the recipe file", BUILD, 2,
         ("{recipe}", "cannot be read")),
    Case("recipe-empty", "recipe", "an empty recipe file", BUILD, 2,
         ("{recipe}", "YAML mapping")),
    Case("recipe-huge-grid", "recipe", "`grid.resolution: 1.0e-300` (1e302 cells)", BUILD, 2,
         ("{recipe}", "grid", "too large")),
    Case("recipe-subnormal-resolution", "recipe",
         "`grid.resolution: 5.0e-324` (cell count overflows to infinity)", BUILD, 2,
         ("{recipe}", "grid", "too large")),
    Case("recipe-infinite-bbox", "recipe", "`grid.bbox: [-.inf, -4, .inf, 4]`", BUILD, 2,
         ("{recipe}", "grid.bbox", "finite number")),
    Case("recipe-nan-scale-factor", "recipe", "`scale_factor: .nan` for a variable", BUILD, 2,
         ("{recipe}", "sources[0].variables[0].scale_factor", "finite number")),
    Case("recipe-time-axis-bomb", "recipe",
         "`grid.time` from 1700 to 2260 every second (1.8e10 steps)", BUILD, 2,
         ("{recipe}", "grid.time", "1,000,000 allowed")),
    Case("files-malformed-pattern", "recipe",
         "`files.pattern: data/{time:%Y%m%d.nc` (an unclosed field)", BUILD, 2,
         ("{recipe}", "sources[0].files.pattern", "malformed")),
    Case("files-granule-bomb", "recipe",
         "a pattern over every second of 2000-01-01..04-26 (10,022,401 granules)", BUILD, 2,
         ("{recipe}", "10,022,401 granules", "at most 1,000,000")),
    Case("files-unknown-scheme", "recipe", "`files.urls: [nosuch://host/a.nc]`", BUILD, 2,
         ("sources.local", "nosuch://host/a.nc", "nosuch")),
    Case("files-empty-glob", "recipe", "`files.glob` matching no file", BUILD, 2,
         ("sources.local.files.glob", "{ws}/none_*.nc", "matches no file")),
    Case("files-missing-granule", "recipe",
         "a pattern over 3 monthly files, the second missing (`missing: error`)", BUILD, 2,
         ("sources.local", "{ws}/g_202002.nc", "missing: skip")),
    Case("wmts-layer-missing", "recipe",
         "a WMTS capabilities document without the recipe's layer", BUILD, 2,
         ("sources.local.wmts.layer", "'BlueMarble_NextGeneration'", "['Coastlines']")),
    Case("wmts-tile-matrix-set-missing", "recipe",
         "`wmts.tile_matrix_set: 250m`, a set the layer does not link", BUILD, 2,
         ("sources.local.wmts.tile_matrix_set", "'250m'", "['1deg']")),
    Case("wmts-zoom-missing", "recipe", "`wmts.zoom: 9` in a tile matrix set of one zoom",
         BUILD, 2, ("sources.local.wmts.zoom", "no TileMatrix '9'", "['0']")),
    Case("wmts-time-missing", "recipe",
         "`wmts.time: 2030-01-01` for a layer of 2004 (`Time` 2004-01-01/2004-12-01/P1M)",
         BUILD, 2, ("sources.local.wmts.time", "2030-01-01", "2004-01-01/2004-12-01/P1M")),
    Case("wmts-tile-not-image", "source file",
         "WMTS tiles that are XML error documents, not images", BUILD, 2,
         ("sources.local", "tile {ws}/tiles/0/21/44.png", "not an image", "ExceptionReport")),
    Case("stac-asset-missing", "recipe", "`files.stac.asset: B04`, an asset the items lack",
         BUILD, 2, ("sources.local.files.stac", "item 'g_202001'", "no asset 'B04'",
                    "['data']")),
    Case("stac-no-items", "recipe", "a STAC search whose query matches no item", BUILD, 2,
         ("sources.local.files.stac", "no STAC item", "{ws}/catalog.json",
          '"platform": "sentinel-2a"')),
    Case("recipe-unknown-key-did-you-mean", "recipe", "`grid.resolutoin: 1.0` (a typo)",
         BUILD, 2, ("{recipe}", "grid.resolutoin", "unknown key (did you mean 'resolution'?)",
                    "docs/RECIPE_REFERENCE.md")),
    Case("recipe-sample-did-you-mean", "recipe", "`sample: ostia-montly` (a typo)", BUILD, 2,
         ("{recipe}", "sources[0].sample",
          "'ostia-montly' is not a registered sample (did you mean 'ostia-monthly'?)",
          "esdc samples list")),
    Case("recipe-bbox-latitude-first", "recipe",
         "`grid.bbox: [45, -125, 50, -116]` (south, west, north, east: latitude first)",
         BUILD, 2, ("{recipe}", "grid.bbox", "not within -90..90", "latitude first",
                    "[-125, 45, -116, 50]")),
    Case("recipe-resolution-in-metres-on-degrees", "recipe",
         "`grid.resolution: 5000` on EPSG:4326 (metres meant, degrees read)", BUILD, 2,
         ("{recipe}", "grid.resolution 5000.0 gives 0 x 0 cells", "(degrees)",
          "5000 looks like metres")),
    Case("recipe-message-square-brackets", "recipe",
         "`grid.bbox: [4, 0, 0, 4]` (west > east): the message's `[west, south, east, "
         "north]` printed literally, not eaten as markup", BUILD, 2,
         ("{recipe}", "is empty: give [west, south, east, north] with east > west")),
    Case("recipe-name-path-traversal", "recipe",
         "`name: ../../etc/evil` (the default output is cubes/NAME.zarr)",
         "esdc build {recipe} --no-fetch", 2, ("{recipe}", "name", "should match pattern")),
    # ------------------------------------------------------------------ source files
    Case("source-truncated-netcdf4", "source file", "a NetCDF-4 file cut to half its bytes",
         BUILD, 2, ("sources.local", "{ws}/truncated.nc", "not a readable NETCDF file")),
    Case("source-truncated-netcdf3", "source file",
         "a classic NetCDF file missing its last 20 bytes (coordinates read as zeros)",
         BUILD, 2, ("sources.local", "{ws}/truncated3.nc", "not monotonic")),
    Case("source-png-as-netcdf", "source file", "a PNG image renamed `data.nc`", BUILD, 2,
         ("sources.local", "{ws}/data.nc", "not a readable NETCDF file")),
    Case("source-png-as-geotiff", "source file",
         "a PNG image renamed `data.tif`, declared `format: geotiff`", BUILD, 2,
         ("sources.local", "{ws}/data.tif", "has no CRS", "georeference.crs")),
    Case("source-wrong-crs-geotiff", "source file",
         "a Web Mercator (EPSG:3857) GeoTIFF declared as EPSG:4326 with a degree bbox",
         BUILD, 2, ("sources.local", "georeference.bbox", "{ws}/merc.tif")),
    Case("source-wrong-crs-netcdf", "source file",
         "a lat/lon NetCDF declared `georeference.crs: EPSG:32633` (UTM metres)", BUILD, 2,
         ("grid.bbox", "outside every source", "local")),
    Case("source-enormous-netcdf", "source file",
         "a 8 kB NetCDF-4 declaring a 100,000 x 100,000 variable", BUILD, 2,
         ("sources.local", "{ws}/huge.nc", "100000 x 100000 pixels")),
    Case("source-enormous-geotiff", "source file",
         "a sparse 116 kB GeoTIFF declaring 100,000 x 100,000 pixels", BUILD, 2,
         ("sources.local", "{ws}/huge.tif", "100000 x 100000 pixels")),
    Case("source-all-nan-coordinates", "source file",
         "a curvilinear NetCDF whose 2-D latitude/longitude are all NaN", BUILD, 2,
         ("sources.local", "{ws}/swath.nc", "no finite value")),
    Case("source-all-nan-data", "source file",
         "a NetCDF whose variable is NaN everywhere (the layer would be empty)", BUILD, 2,
         ("no valid value anywhere in the grid", "t2m (source local)", "unchanged")),
    Case("source-checksum-mismatch", "source file",
         "a source file whose bytes differ from the recipe's `sha256`", BUILD, 2,
         ("sources.local", "{ws}/good.nc", "SHA-256")),
    Case("source-declared-bbox-disagrees", "source file",
         "a lat/lon NetCDF (0..4 degrees) declared `georeference.bbox: [0.5, 0, 4.5, 4]`, "
         "half a pixel off its own coordinates", BUILD, 2,
         ("sources.local", "georeference.bbox [0.5, 0.0, 4.5, 4.0]",
          "bounds [0.0, 0.0, 4.0, 4.0] of {ws}/own.nc", "a tenth of a pixel")),
    Case("source-projected-without-grid-mapping", "source file",
         "a NetCDF with x/y coordinates in metres and no CF `grid_mapping`", BUILD, 2,
         ("sources.local", "{ws}/metres.nc", "projected coordinates", "no CF grid_mapping")),
    Case("source-misses-grid", "source file",
         "a second source (40..44 degrees) beside one on the grid (0..4 degrees): its layer "
         "would be NaN everywhere; refused before computing, with both extents", BUILD, 2,
         ("sources.far", "{ws}/far.nc", "[west, south, east, north] = [40, 40, 44, 44] in "
          "EPSG:4326", "outside grid.bbox [0, 0, 4, 4] (EPSG:4326)",
          "t2far would be NaN everywhere")),
    Case("source-misses-grid-projected", "source file",
         "a second source, a UTM zone 33N GeoTIFF 5000 km north of the grid: its extent in "
         "its own CRS", BUILD, 2,
         ("sources.far", "{ws}/utm.tif", "[west, south, east, north] = [500000, 5000000, "
          "540000, 5040000] in EPSG:32633", "outside grid.bbox [0, 0, 4, 4] (EPSG:4326)",
          "t2far would be NaN everywhere")),
    Case("recipe-bucket-onto-finer-grid", "recipe",
         "`resampling: bucket_average` of a 1 degree source onto a 0.5 degree grid", BUILD, 2,
         ("sources.local variable t2m", "bucket_average onto grid cells of 0.5 degrees",
          "1 x 1 degrees", "conservative", "bilinear or nearest")),
    # ------------------------------------------------------------------ CLI arguments
    Case("cli-search-lat-not-a-number", "CLI argument", "`--lat abc`",
         "esdc search CUBE --lat abc --lon 0", 2, ("--lat", "Invalid value")),
    Case("cli-search-unknown-option", "CLI argument", "`--colour red` (no such option)",
         "esdc search CUBE --lat 0 --lon 0 --colour red", 2, ("No such option", "--colour")),
    Case("cli-search-k-zero", "CLI argument", "`-k 0`", "esdc search CUBE --lat 0 --lon 0 -k 0",
         2, ("k = 0", "between 1 and 128")),
    Case("cli-search-huge-k", "CLI argument", "`-k 10**23`",
         "esdc search CUBE --lat 0 --lon 0 -k 100000000000000000000000", 2,
         ("between 1 and 128",)),
    Case("cli-search-scales-not-held", "CLI argument", "`--scales 8,64` (the cube holds 8)",
         "esdc search CUBE --lat 0 --lon 0 --scales 8,64", 2,
         ("--scales [64]", "holds embeddings of [8] cells per tile")),
    Case("cli-search-scale-not-held", "CLI argument", "`--scale 16` (the cube holds 8)",
         "esdc search CUBE --lat 0 --lon 0 --scale 16", 2,
         ("scale=16 is not embedded", "its scales (cells per tile) are [8]")),
    Case("cli-search-scales-malformed", "CLI argument", "`--scales eight`",
         "esdc search CUBE --lat 0 --lon 0 --scales eight", 2,
         ("--scales 'eight'", "not 'all' or a comma list")),
    Case("cli-search-bbox-three-numbers", "CLI argument", "`--bbox 1,2,3`",
         "esdc search CUBE --lat 0 --lon 0 --bbox 1,2,3", 2, ("--bbox", "four numbers")),
    Case("cli-search-bbox-nan", "CLI argument", "`--bbox 0,nan,10,40`",
         "esdc search CUBE --lat 0 --lon 0 --bbox 0,nan,10,40", 2, ("--bbox", "finite")),
    Case("cli-search-quicklook-missing-folder", "CLI argument",
         "`--quicklook {ws}/no/such/folder/q.png`",
         "esdc search CUBE --lat 0 --lon 0 --quicklook ...", 2,
         ("--quicklook", "{ws}/no/such/folder", "does not exist")),
    Case("cli-search-missing-cube", "CLI argument", "a cube path that does not exist",
         "esdc search {ws}/missing.zarr --lat 0 --lon 0", 2,
         ("no cube at", "{ws}/missing.zarr")),
    Case("cli-search-file-as-cube", "CLI argument", "a PNG file given as the cube",
         "esdc search {ws}/cube.png --lat 0 --lon 0", 2, ("{ws}/cube.png", "Zarr")),
    Case("cli-index-unknown-kind", "CLI argument", "`--kind bogus`",
         "esdc index CUBE --kind bogus", 2, ("--kind 'bogus'", "flat, hnsw, ivfpq")),
    Case("cli-embed-tile-zero", "CLI argument", "`--tile 0`",
         "esdc embed CUBE --model RUN --tile 0", 2, ("--tile", "positive")),
    Case("cli-plot-unknown-variable", "CLI argument", "a variable the cube lacks",
         "esdc plot CUBE no_such_var --out {ws}/p.png", 2, ("no_such_var", "not in the cube")),
    Case("cli-plot-out-missing-folder", "CLI argument", "`--out {ws}/no/such/folder/p.png`",
         "esdc plot CUBE bmng_red --out ...", 2, ("--out", "{ws}/no/such/folder",
                                                  "does not exist")),
    Case("cli-verify-missing-cube", "CLI argument", "a cube path that does not exist",
         "esdc verify {ws}/missing.zarr", 2, ("no cube at", "{ws}/missing.zarr")),
    Case("cli-serve-port-out-of-range", "CLI argument", "`--port 70000`",
         "esdc serve CUBE --port 70000", 2, ("--port 70000", "0 .. 65535")),
    Case("cli-train-config-python-tag", "CLI argument",
         "a training config with `!!python/object/apply:os.system`",
         "esdc train CUBE --config {ws}/train.yaml", 2,
         ("{ws}/train.yaml", "malformed YAML")),
    Case("cli-train-config-not-utf8", "CLI argument", "a training config of binary bytes",
         "esdc train CUBE --config {ws}/train.yaml", 2, ("{ws}/train.yaml", "cannot be read")),
    Case("cli-train-config-deep-nesting", "CLI argument",
         "a training config of 100,000 nested `[`", "esdc train CUBE --config {ws}/train.yaml",
         2, ("{ws}/train.yaml", "nested too deeply")),
    Case("cli-train-config-is-a-folder", "CLI argument", "`--config` naming a folder",
         "esdc train CUBE --config {ws}", 2, ("config file {ws}", "cannot be read")),
    Case("cli-build-append-with-overwrite", "CLI argument", "`--append --overwrite` together",
         BUILD + " --append --overwrite", 2, ("--append", "--overwrite")),
    Case("cli-plot-rgb-channel-did-you-mean", "CLI argument",
         "`--rgb bmng_red,bmng_green,bmng_blu` (a typo)",
         "esdc plot CUBE --rgb bmng_red,bmng_green,bmng_blu --out {ws}/p.png", 2,
         ("--rgb bmng_red,bmng_green,bmng_blu", "'bmng_blu' is not in the cube",
          "(did you mean 'bmng_blue'?)")),
    Case("cli-plot-rgb-without-blue-marble", "CLI argument",
         "`esdc plot CUBE rgb` on a cube without `bmng_red/green/blue`",
         "esdc plot {ws}/plain.zarr rgb --out {ws}/p.png", 2,
         ("no Blue Marble channels (bmng_red, bmng_green, bmng_blue)", "--rgb R,G,B")),
    Case("cli-export-unknown-extension", "CLI argument", "`esdc export CUBE {ws}/out.csv`",
         "esdc export CUBE {ws}/out.csv", 2, ("{ws}/out.csv", ".nc or .tif")),
    Case("cli-export-variable-did-you-mean", "CLI argument", "`--variables bmng_rd`",
         "esdc export CUBE {ws}/out.nc --variables bmng_rd", 2,
         ("'bmng_rd' is not in the cube (did you mean 'bmng_red'?)",)),
    Case("cli-export-bbox-outside", "CLI argument", "`--bbox 200,0,210,10` (east of 180)",
         "esdc export CUBE {ws}/out.nc --bbox 200,0,210,10", 2,
         ("--bbox 200,0,210,10", "holds no cell centre",
          "west -180, south -90, east 180, north 90")),
    Case("cli-export-time-of-static-cube", "CLI argument", "`--time 2020-01` on a static cube",
         "esdc export CUBE {ws}/out.nc --time 2020-01", 2, ("--time '2020-01'", "static")),
    Case("cli-export-existing-file", "CLI argument", "an OUT file that exists",
         "esdc export CUBE {ws}/out.nc", 2, ("{ws}/out.nc exists", "--overwrite")),
    Case("cli-export-antimeridian-bbox", "CLI argument", "`--bbox 170,-10,-170,10`",
         "esdc export CUBE {ws}/out.nc --bbox 170,-10,-170,10", 2,
         ("crosses the antimeridian", "170,-10,180,10 and -180,-10,-170,10")),
    Case("cli-point-outside-the-cube", "CLI argument", "`esdc point CUBE 95 0` (north of 90)",
         "esdc point CUBE 95 0", 2,
         ("lat=95.0 lon=0.0 is outside the cube", "north 90")),
    Case("cli-point-json-and-csv", "CLI argument", "`--json --csv` together",
         "esdc point CUBE 0 0 --json --csv", 2, ("--json or --csv, not both",)),
    # ------------------------------------------------------------------ embeddings / index
    Case("index-missing", "cube / embeddings / index", "a cube whose index folder was removed",
         SEARCH_COPY, 2, ("no index", "esdc index")),
    Case("index-missing-serve", "cube / embeddings / index", "the same, served over HTTP",
         "esdc serve {ws}/cube.zarr", 2, ("no index", "esdc index")),
    Case("index-truncated", "cube / embeddings / index", "the `.faiss` file cut to half its bytes",
         SEARCH_COPY, 2, ("{ws}/cube.zarr.index/embedding_t8", ".faiss", "SHA-256")),
    Case("index-garbage", "cube / embeddings / index",
         "random bytes as the `.faiss` file, manifest SHA-256 updated to match", SEARCH_COPY, 2,
         ("{ws}/cube.zarr.index/embedding_t8", ".faiss", "not a FAISS index")),
    Case("index-wrong-kind", "cube / embeddings / index",
         "a valid FAISS index of other vectors (8 of dim 4), manifest SHA-256 updated",
         SEARCH_COPY, 2, ("embedding_t8", ".faiss", "not the IndexIDMap2 of 128 x 16")),
    Case("index-manifest-not-json", "cube / embeddings / index", "the manifest replaced by `{{{`",
         SEARCH_COPY, 2, ("{ws}/cube.zarr.index/embedding_t8.json",
                          "not a valid index manifest")),
    Case("index-manifest-extra-key", "cube / embeddings / index",
         "a manifest with an unknown key `evil`", SEARCH_COPY, 2,
         ("embedding_t8.json", "not a valid index manifest")),
    Case("index-manifest-altered", "cube / embeddings / index",
         "the manifest's `index_sha256` changed", SEARCH_COPY, 2,
         ("embedding_t8", ".faiss", "does not match its manifest")),
    Case("index-lineage-mismatch", "cube / embeddings / index",
         "the cube's embeddings re-attributed to another model run", SEARCH_COPY, 2,
         ("lineage mismatch", "esdc index")),
    Case("cube-chunk-truncated", "cube / embeddings / index",
         "one chunk file of `bmng_red` cut to half its bytes", "esdc plot {ws}/cube.zarr bmng_red",
         2, ("could not be decoded", "esdc verify CUBE --checksums")),
    Case("cube-metadata-garbage", "cube / embeddings / index",
         "the cube's root `zarr.json` replaced by `{garbage`", "esdc info {ws}/cube.zarr", 2,
         ("{ws}/cube.zarr", "not a readable Zarr cube")),
    Case("cube-metadata-enormous-shape", "cube / embeddings / index",
         "one array's `zarr.json` (and the consolidated copy) declaring 10**12 x 10**12",
         SEARCH_COPY, 2, ("{ws}/cube.zarr", "not a readable Zarr cube", "conflicting sizes")),
    Case("embeddings-all-nan", "cube / embeddings / index", "every embedding vector NaN",
         "esdc index {ws}/cube.zarr", 2, ("embedding_t8", "no valid vector")),
    Case("embeddings-none", "cube / embeddings / index", "a cube without embeddings",
         "esdc index {ws}/plain.zarr", 2, ("no embeddings", "esdc embed")),
    # ------------------------------------------------------------------ HTTP requests
    Case("http-k-zero", "HTTP request", "`k=0`", "GET /search/tile?lat=0&lon=0&k=0", 422,
         ("k", "greater than or equal to 1")),
    Case("http-k-huge", "HTTP request", "`k=10**26`",
         "GET /search/tile?lat=0&lon=0&k=99999999999999999999999999", 422,
         ("between 1 and 128",)),
    Case("http-bbox-letters", "HTTP request", "`bbox=a,b,c,d`",
         "GET /search/tile?lat=0&lon=0&bbox=a,b,c,d", 422, ("bbox", "four numbers")),
    Case("http-bbox-nan", "HTTP request", "`bbox=0,nan,10,40`",
         "GET /search/tile?lat=0&lon=0&bbox=0,nan,10,40", 422, ("bbox", "finite")),
    Case("http-lat-overflow", "HTTP request", "`lat=1e309` (infinite)",
         "GET /search/tile?lat=1e309&lon=0", 422, ("lat", "finite number")),
    Case("http-vector-wrong-dim", "HTTP request", "a 15-value vector for a 16-d index",
         "POST /search/vector", 422, ("15 values", "16-dimensional")),
    Case("http-vector-nan", "HTTP request", "a `NaN` token in the vector",
         "POST /search/vector", 422, ("NaN or infinite",)),
    Case("http-vector-float32-overflow", "HTTP request", "vector values of 1e300 (inf in float32)",
         "POST /search/vector", 422, ("NaN or infinite",)),
    Case("http-vector-too-long", "HTTP request", "a vector of 70,000 values",
         "POST /search/vector", 422, ("vector", "at most 65536")),
    Case("http-non-json-body", "HTTP request", "body `this is not json`",
         "POST /search/vector", 422, ("JSON decode error",)),
    Case("http-body-is-array", "HTTP request", "a JSON array instead of an object",
         "POST /search/vector", 422, ("valid dictionary",)),
    Case("http-unknown-field", "HTTP request", "an extra field `colour`",
         "POST /search/vector", 422, ("colour", "Extra inputs are not permitted")),
    Case("http-start-after-end", "HTTP request", "`start` after `end`",
         "POST /search/vector", 422, ("start 2020-01 is after end 2019",)),
    Case("http-path-traversal", "HTTP request", "`/tiles/../../etc/passwd.png`",
         "GET /tiles/../../etc/passwd.png", 404, ("Not Found",)),
    Case("http-path-traversal-encoded", "HTTP request",
         "`/tiles/%2e%2e/%2e%2e/etc/passwd.png` (percent-encoded dots)",
         "GET /tiles/%2e%2e/%2e%2e/etc/passwd.png", 404, ("Not Found",)),
    Case("http-tile-huge-index", "HTTP request", "tile row 10**23",
         "GET /tiles/99999999999999999999999/0.png", 422, ("outside the embedding grid",)),
    Case("http-tile-negative-time", "HTTP request", "`t=-1`", "GET /tiles/0/0.png?t=-1", 422,
         ("t", "greater than or equal to 0")),
    Case("http-scales-not-held", "HTTP request", "`scales=8,64` (the cube holds 8)",
         "GET /search/tile?lat=0&lon=0&scales=8,64", 422,
         ("scales=[64]", "holds embeddings of [8] cells per tile")),
    Case("http-scale-not-held", "HTTP request", "`scale=32` (the cube holds 8)",
         "GET /search/tile?lat=0&lon=0&scale=32", 422,
         ("scale=32 is not embedded", "are [8]")),
    Case("http-refine-scale-not-held", "HTTP request",
         "a refinement whose positive tile has `scale: 64` (the cube holds 8)",
         "POST /search/refine", 422,
         ("positive tile 1", "scale=64 is not embedded", "are [8]")),
)


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def markdown() -> str:
    """The catalogue as a Markdown document (``docs/HOSTILE_INPUTS.md``)."""
    lines = [
        "# Hostile inputs",
        "",
        "Generated from `tests/reliability/catalogue.py` by",
        "`python -m tests.reliability.catalogue > docs/HOSTILE_INPUTS.md`; do not edit by",
        "hand (`tests/reliability/test_hostile_catalogue.py` checks this file is current).",
        "",
        "Each input is fed to the real CLI (in-process, `typer`'s `CliRunner`) or to the",
        "FastAPI app of `esdc serve` (`TestClient`). Every case must answer with the",
        "expected exit code (2: a user error, one paragraph, no traceback) or HTTP status,",
        "with a message that contains the fragments listed (`{ws}` is the case's folder,",
        "`{recipe}` its `recipe.yaml`), and must leave the case's folder and the shared",
        "cube byte-identical (nothing written, nothing changed, no `pwned` file).",
        "",
        f"{len(CASES)} cases.",
        "",
        "| # | id | category | input | run | expect | message contains |",
        "|---|---|---|---|---|---|---|",
    ]
    order = sorted(CASES, key=lambda c: CATEGORIES.index(c.category))
    for i, c in enumerate(order, 1):
        needles = ", ".join(f"`{n}`" for n in c.needles)
        lines.append(f"| {i} | `{c.id}` | {c.category} | {_cell(c.fed)} | "
                     f"`{_cell(c.run)}` | {c.expect} | {_cell(needles)} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":  # pragma: no cover
    print(markdown(), end="")
