// esdc search page: a Leaflet map (vendored: static/vendor/leaflet) over the cube's XYZ
// tiles (map/{layer}/{z}/{x}/{y}.png), the search API (search/tile, search/refine) and
// the tile thumbnails (tiles/{ty}/{tx}.png). All URLs are relative to the page; nothing is
// loaded from another site. window.esdc exposes the state (map, info, last answer) to tests.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let info = null;        // map.json
  let map = null, tiles = null;
  let sequence = 0;       // newest request wins
  let bbox = null;        // [W, S, E, N] in the grid's coordinates, or null
  let boxShape = null;    // the drawn rectangle
  let drawing = null;     // {start: LatLng} while a box is drawn
  let drawMode = false;   // the Draw box button is pressed
  let skipClick = false;  // the click that ends a drawn box is not a search
  let last = null;        // the answer shown: {query, neighbours, url}
  const outlines = [];    // rectangles of the neighbours
  const state = {};
  window.esdc = state;

  function setState(s) { document.body.dataset.state = s; }
  const {el, fmt, errorMessage} = window.esdcCommon;
  function pixel() { return info.crs === "pixel"; }
  function param(i) { return window.esdcCommon.param(info, i); }
  function unit(i) { return window.esdcCommon.unit(info, i); }

  // ---------------------------------------------------------------- geometry
  // Size of a cell along rows / columns in the grid's units (signed: edge0 + i * step).
  function dy() { return (info.y_edges[1] - info.y_edges[0]) / info.shape[0]; }
  function dx() { return (info.x_edges[1] - info.x_edges[0]) / info.shape[1]; }
  // Grid coordinates (y, x) -> map LatLng: lat/lon as such, or cell space (lat = -row).
  function toLatLng(gy, gx) {
    if (!pixel()) return L.latLng(gy, gx);
    return L.latLng(-(gy - info.y_edges[0]) / dy(), (gx - info.x_edges[0]) / dx());
  }
  // Map LatLng -> grid coordinates [y, x] (and the cell [row, col]).
  function fromLatLng(ll) {
    if (!pixel()) {
      const west = info.bounds[0];
      const lon = ((ll.lng - west) % 360 + 360) % 360 + west;  // into the cube's longitudes
      return [ll.lat, lon];
    }
    return [info.y_edges[0] + (-ll.lat) * dy(), info.x_edges[0] + ll.lng * dx()];
  }
  function cellOf(ll) {
    if (pixel()) return [Math.floor(-ll.lat), Math.floor(ll.lng)];
    const [gy, gx] = fromLatLng(ll);
    return [Math.floor((gy - info.y_edges[0]) / dy()), Math.floor((gx - info.x_edges[0]) / dx())];
  }
  // [W, S, E, N] of a neighbour: its bounds from the API, or derived from its tile.
  function boundsOf(n) {
    if (Array.isArray(n.bounds) && n.bounds.length === 4) return n.bounds;
    const s = n.scale || info.tile_size;
    const y0 = info.y_edges[0] + n.tile_y * s * dy(), y1 = y0 + s * dy();
    const x0 = info.x_edges[0] + n.tile_x * s * dx(), x1 = x0 + s * dx();
    return [Math.min(x0, x1), Math.min(y0, y1), Math.max(x0, x1), Math.max(y0, y1)];
  }
  function rectOf(b) { return L.latLngBounds(toLatLng(b[1], b[0]), toLatLng(b[3], b[2])); }

  // ---------------------------------------------------------------- map
  function timeIndex() { return info.times ? Number($("time").value) : null; }
  function timeValue() { return info.times ? info.times[timeIndex()] : null; }
  function tileUrl() {
    const t = timeValue();
    return "map/" + encodeURIComponent($("layer").value) + "/{z}/{x}/{y}.png" +
      (t ? "?time=" + t : "");
  }
  function showLegend() {
    const name = $("layer").value;
    fetch("map/" + encodeURIComponent(name) + "/legend.json").then((r) => r.json()).then((g) => {
      if ($("layer").value !== name) return;  // a later layer was chosen meanwhile: its legend wins
      let text = g.long_name + (g.units && g.units !== "1" ? " (" + g.units + ")" : "");
      if (g.kind === "continuous") text += ": " + g.cmap + " from " + fmt(g.vmin) + " to " + fmt(g.vmax);
      if (g.kind === "flags") text += ": flags " + g.flags.join(", ");
      $("legend").textContent = "Layer " + name + " \u2014 " + text + ".";
    }).catch(() => { if ($("layer").value === name) $("legend").textContent = ""; });
  }

  function setupMap() {
    const crs = pixel() ? L.CRS.Simple : L.CRS.EPSG4326;
    const [w, s, e, n] = info.bounds;
    const extent = pixel() ? L.latLngBounds([-info.shape[0], 0], [0, info.shape[1]])
      : L.latLngBounds([s, w], [n, e]);
    map = L.map("map", {crs: crs, minZoom: info.min_zoom, maxZoom: info.max_zoom,
                        boxZoom: false, attributionControl: false, worldCopyJump: false});
    if (pixel()) $("map").classList.add("pixel");
    tiles = L.tileLayer(tileUrl(), {tileSize: info.tile, minZoom: info.min_zoom,
                                    maxZoom: info.max_zoom, noWrap: pixel(),
                                    bounds: pixel() ? extent : undefined});
    tiles.addTo(map);
    map.fitBounds(extent);
    state.map = map; state.tiles = tiles; state.L = L;
    tiles.on("load", () => { if (document.body.dataset.state === "loading") setState("ready"); });
    tiles.on("tileerror", (ev) => { state.tileErrors = (state.tileErrors || 0) + 1; });

    map.on("mousemove", (ev) => {
      const [gy, gx] = fromLatLng(ev.latlng);
      const [row, col] = cellOf(ev.latlng);
      const names = info.coordinates;
      $("cursor").textContent = names[0] + " " + fmt(gy) + unit(0) + ", " + names[1] + " " +
        fmt(gx) + unit(1) + (pixel() ? "  (pixel row " + row + ", column " + col + ")" : "");
      if (drawing) moveBox(ev.latlng);
    });
    map.on("mousedown", (ev) => {
      if (!(drawMode || ev.originalEvent.shiftKey)) return;
      drawing = {start: ev.latlng};
      map.dragging.disable();
      moveBox(ev.latlng);
    });
    map.on("mouseup", (ev) => { if (drawing) endBox(ev.latlng); });
    map.on("click", (ev) => {
      if (skipClick) { skipClick = false; return; }
      if (drawMode || ev.originalEvent.shiftKey) return;
      search(fromLatLng(ev.latlng));
    });
  }

  // ---------------------------------------------------------------- the box
  function moveBox(ll) {
    const b = L.latLngBounds(drawing.start, ll);
    if (boxShape) boxShape.setBounds(b);
    else boxShape = L.rectangle(b, {color: "#1c7ed6", weight: 2, fillOpacity: 0.08,
                                    dashArray: "6 4", className: "bbox", interactive: false})
      .addTo(map);
  }
  function endBox(ll) {
    moveBox(ll);
    const [ya, xa] = fromLatLng(drawing.start), [yb, xb] = fromLatLng(ll);
    drawing = null;
    map.dragging.enable();
    skipClick = true;
    setTimeout(() => { skipClick = false; }, 0);
    drawMode = false;
    $("draw").setAttribute("aria-pressed", "false");
    if (Math.abs(ya - yb) === 0 || Math.abs(xa - xb) === 0) { clearBox(); return; }
    setBox([Math.min(xa, xb), Math.min(ya, yb), Math.max(xa, xb), Math.max(ya, yb)]);
  }
  function setBox(b) {
    bbox = b;
    state.bbox = b;
    $("bbox-label").textContent = b ? "bbox " + b.map(fmt).join(", ") : "";
    $("clear-box").disabled = !b;
    if (last) search(last.point);
  }
  function clearBox() {
    if (boxShape) { boxShape.remove(); boxShape = null; }
    setBox(null);
  }

  // ---------------------------------------------------------------- answers
  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    $("results").hidden = true;
    outlines.forEach((r) => r.remove());
    outlines.length = 0;
  }
  async function ask(url, options) {
    const mine = ++sequence;
    setState("searching");
    let response, body = null;
    try {
      response = await fetch(url, options);
      try { body = await response.json(); } catch (e) { body = null; }
    } catch (e) {
      if (mine === sequence) { showError("the search server did not answer (" + e + ")."); setState("error"); }
      return null;
    }
    if (mine !== sequence) return null;
    if (!response.ok || !body || !body.neighbours) {
      showError(errorMessage(response.status, body));
      setState("error");
      return null;
    }
    return body;
  }

  function thumbnail(n) {
    const t = n.time && info.times ? info.times.indexOf(n.time) : -1;
    const q = [];
    if (t >= 0) q.push("t=" + t);
    if (n.scale && n.scale !== info.tile_size) q.push("scale=" + n.scale);
    return "tiles/" + n.tile_y + "/" + n.tile_x + ".png" + (q.length ? "?" + q.join("&") : "");
  }
  function mark(n) {  // a tile of a refinement: a point in it, its scale and time
    const m = {};
    m[param(0)] = n[info.coordinates[0]];
    m[param(1)] = n[info.coordinates[1]];
    if (n.scale) m.scale = n.scale;
    if (n.time) m.time = n.time;
    return m;
  }
  function card(n, rank, isQuery) {
    const names = info.coordinates, q = last.query;
    const same = !isQuery && n.tile_y === q.tile_y && n.tile_x === q.tile_x &&
      n.time === q.time && (n.scale || 0) === (q.scale || n.scale || 0);
    const li = el(isQuery ? "div" : "li", {
      class: "tile" + (same ? " self" : ""), "data-rank": rank,
      "data-tile-y": n.tile_y, "data-tile-x": n.tile_x, "data-time": n.time ?? "",
      "data-scale": n.scale ?? "", "data-y": n[names[0]], "data-x": n[names[1]],
    });
    if (!isQuery) li.dataset.distance = n.distance;
    li.appendChild(el("img", {src: thumbnail(n), alt: "tile " + n.tile_y + ", " + n.tile_x,
                              loading: "lazy"}));
    const head = el("div");
    head.appendChild(el("span", {class: "rank"}, isQuery ? "query" : "#" + rank));
    head.appendChild(document.createTextNode(" tile " + n.tile_y + ", " + n.tile_x +
                                             (n.scale ? " (" + n.scale + " cells)" : "")));
    li.appendChild(head);
    for (const i of [0, 1]) {
      li.appendChild(el("div", {class: i ? "coord-x" : "coord-y"},
                        names[i] + " " + fmt(n[names[i]]) + unit(i)));
    }
    if (n.time) li.appendChild(el("div", {class: "time"}, n.time));
    if (!isQuery) {
      li.appendChild(el("div", {class: "distance"}, "d = " + Number(n.distance).toFixed(4)));
      for (const [cls, text] of [["more", "more like this"], ["not", "not this"]]) {
        const lab = el("label");
        const box = el("input", {type: "checkbox", class: cls});
        box.addEventListener("change", () => {
          if (box.checked) {  // one of the two
            const other = li.querySelector("input." + (cls === "more" ? "not" : "more"));
            other.checked = false;
          }
          li.classList.toggle("more", li.querySelector("input.more").checked);
          li.classList.toggle("not", li.querySelector("input.not").checked);
          $("refine").disabled = !document.querySelector("#neighbours input:checked");
        });
        lab.appendChild(box);
        lab.appendChild(document.createTextNode(" " + text));
        li.appendChild(lab);
      }
    }
    return li;
  }

  function render(body, url, point, refined) {
    last = {query: body.query, neighbours: body.neighbours, url: url,
            point: point || (last && last.point)};
    state.last = last;
    if (!refined) state.query = body.query;
    const q = state.query;
    $("query-tile").replaceChildren(card(q, 0, true));
    $("neighbours").replaceChildren(...body.neighbours.map((n, i) => card(n, i + 1, false)));
    $("count").textContent = "(k = " + body.neighbours.length + ")";
    $("json-link").href = url;
    $("refine").disabled = true;
    $("refined").hidden = !refined;
    outlines.forEach((r) => r.remove());
    outlines.length = 0;
    // The query tile, then the neighbours last-to-first (the nearest drawn on top).
    if (q.tile_y !== undefined) {
      outlines.push(L.rectangle(rectOf(boundsOf(q)), {color: "#ffd43b", weight: 3, fill: false,
                                                     className: "outline query"}).addTo(map));
    }
    for (let i = body.neighbours.length - 1; i >= 0; i--) {
      const n = body.neighbours[i];
      const r = L.rectangle(rectOf(boundsOf(n)), {color: "#d9480f", weight: 2, fillOpacity: 0.1,
                                                 className: "outline neighbour rank-" + (i + 1)});
      r.bindTooltip("#" + (i + 1) + " d = " + Number(n.distance).toFixed(4),
                    {className: "rank-label"});
      outlines.push(r.addTo(map));
    }
    $("error").hidden = true;
    $("results").hidden = false;
    setState("done");
  }

  function filters(params) {
    params.set("k", $("k").value);
    if (bbox) params.set("bbox", bbox.map((v) => String(v)).join(","));
  }
  function scalesSearched() {
    return [...document.querySelectorAll("#scales input:checked")].map((b) => Number(b.value));
  }

  async function search(point) {
    const params = new URLSearchParams();
    params.set(param(0), String(point[0]));
    params.set(param(1), String(point[1]));
    filters(params);
    if (info.times) params.set("time", timeValue());
    if (info.scales.length > 1) {
      params.set("scale", $("scale").value);
      params.set("scales", scalesSearched().join(",") || $("scale").value);
    }
    const url = "search/tile?" + params.toString();
    const body = await ask(url, {headers: {Accept: "application/json"}});
    if (body) render(body, url, point, false);
  }

  async function refine() {
    const q = state.query;
    const cards = [...document.querySelectorAll("#neighbours .tile")];
    const pick = (cls) => cards.filter((c) => c.querySelector("input." + cls).checked)
      .map((c) => mark(last.neighbours[Number(c.dataset.rank) - 1]));
    const body = {positive: [mark(q), ...pick("more")], negative: pick("not"),
                  k: Number($("k").value)};
    if (bbox) body.bbox = bbox;
    if (info.scales.length > 1) body.scales = scalesSearched();
    const answer = await ask("search/refine", {
      method: "POST", body: JSON.stringify(body),
      headers: {"Content-Type": "application/json", Accept: "application/json"}});
    state.refineBody = body;
    if (answer) render(answer, "search/refine", null, true);
  }

  // ---------------------------------------------------------------- set-up
  function setup(health) {
    $("cube-name").textContent = "\u2014 " + info.cube;
    $("about").textContent = "Searching " + info.variable + " (" + info.tiles[0] + " \u00d7 " +
      info.tiles[1] + " tiles of " + info.tile_size + " \u00d7 " + info.tile_size + " cells" +
      (info.times ? ", " + info.times.length + " time steps" : "") + ", " + info.index.kind +
      " index of " + info.index.count + " vectors). Map: " +
      (pixel() ? "cell (pixel) coordinates" : "plate carr\u00e9e (longitude, latitude)") + ".";
    for (const layer of info.layers) {
      $("layer").appendChild(el("option", {value: layer.name}, layer.name));
    }
    const manifest = (health && health.manifest) || {};
    const scales = Array.isArray(manifest.scales) && manifest.scales.length
      ? manifest.scales.map(Number) : info.scales;
    info.scales = [...scales].sort((a, b) => a - b);
    for (const s of info.scales) {
      $("scale").appendChild(el("option", {value: s}, s + " cells"));
      const lab = el("label");
      const box = el("input", {type: "checkbox", value: s});
      box.checked = s === info.scales[0];  // default: the finest
      lab.appendChild(box);
      lab.appendChild(document.createTextNode(" " + s));
      $("scales").appendChild(lab);
    }
    $("k").max = info.index.count;
    if (info.times) {
      $("time").max = info.times.length - 1;
      $("time-label").textContent = info.times[0];
      $("time-field").hidden = false;
      $("time").addEventListener("input", () => {
        $("time-label").textContent = timeValue();
        tiles.setUrl(tileUrl());
      });
    }
    setupMap();
    $("layer").addEventListener("change", () => { tiles.setUrl(tileUrl()); showLegend(); });
    showLegend();
    $("draw").addEventListener("click", () => {
      drawMode = !drawMode;
      $("draw").setAttribute("aria-pressed", String(drawMode));
    });
    $("clear-box").addEventListener("click", clearBox);
    $("refine").addEventListener("click", refine);
    $("controls").addEventListener("submit", (ev) => ev.preventDefault());
    state.info = info;
    state.search = search;
  }

  Promise.all([
    fetch("map.json").then((r) => {
      if (!r.ok) throw new Error("map.json: " + r.status);
      return r.json();
    }),
    fetch("health").then((r) => (r.ok ? r.json() : null)).catch(() => null),
  ]).then(([data, health]) => { info = data; setup(health); }).catch((e) => {
    $("about").textContent = "";
    showError("the page could not load the cube's map (" + e.message + ").");
    setState("error");
  });
})();
