// esdc overview page (/overview): plain JavaScript, no libraries, no external resources.
// Reads overview.json (geometry), shows overview.png, asks search/tile and shows the
// neighbours with tiles/{ty}/{tx}.png. All URLs are relative to the page.
"use strict";
(function () {
  const $ = (id) => document.getElementById(id);
  let info = null;      // overview.json
  let sequence = 0;     // newest request wins

  function setState(state) { document.body.dataset.state = state; }

  const {el, fmt, errorMessage} = window.esdcCommon;
  function param(i) { return window.esdcCommon.param(info, i); }
  function unit(i) { return window.esdcCommon.unit(info, i); }

  function label(i) {
    const u = unit(i);
    return info.coordinates[i] + (u ? " (" + u.trim() + ")" : "");
  }


  // Coordinate at a continuous cell position along one axis (0 .. rows or columns),
  // interpolated between the bounds of the tile containing it.
  function coordAt(bounds, cell) {
    const size = info.tile_size;
    const r = Math.min(Math.max(Math.floor(cell / size), 0), bounds.length - 1);
    const f = (cell - r * size) / size;
    return bounds[r][0] + f * (bounds[r][1] - bounds[r][0]);
  }

  // Cell (row, column) under a mouse event on the overview image.
  function cellOf(event) {
    const rect = $("overview").getBoundingClientRect();
    const fy = (event.clientY - rect.top) / rect.height;
    const fx = (event.clientX - rect.left) / rect.width;
    const row = Math.floor(fy * info.height * info.step);
    const col = Math.floor(fx * info.width * info.step);
    return [Math.min(Math.max(row, 0), info.cells[0] - 1),
            Math.min(Math.max(col, 0), info.cells[1] - 1)];
  }

  // Centre of a cell in the grid's coordinates.
  function pointOf(cell) {
    return [coordAt(info.y_bounds, cell[0] + 0.5), coordAt(info.x_bounds, cell[1] + 0.5)];
  }

  // Position of a tile's centre on the image, in percent.
  function tilePosition(ty, tx) {
    const s = info.tile_size;
    return [100 * (ty + 0.5) * s / (info.height * info.step),
            100 * (tx + 0.5) * s / (info.width * info.step)];
  }

  function timeIndex() { return info.times ? Number($("time").value) : null; }


  function drawAxes() {
    const yAxis = $("y-axis"), xAxis = $("x-axis");
    yAxis.replaceChildren(); xAxis.replaceChildren();
    const shownRows = info.height * info.step, shownCols = info.width * info.step;
    for (let i = 0; i <= 4; i++) {
      const row = Math.min(info.cells[0] * i / 4, info.cells[0]);
      const col = Math.min(info.cells[1] * i / 4, info.cells[1]);
      const yt = el("span", {class: "tick"}, fmt(coordAt(info.y_bounds, row)) + unit(0));
      yt.style.top = (100 * row / shownRows) + "%";
      yAxis.appendChild(yt);
      const xt = el("span", {class: "tick"}, fmt(coordAt(info.x_bounds, col)) + unit(1));
      xt.style.left = (100 * col / shownCols) + "%";
      xAxis.appendChild(xt);
    }
  }

  function showOverview() {
    const t = timeIndex();
    $("overview").src = "overview.png" + (t === null ? "" : "?t=" + t);
  }

  function showError(message) {
    $("error").textContent = message;
    $("error").hidden = false;
    $("results").hidden = true;
    $("markers").replaceChildren();
  }


  // One tile card: thumbnail, coordinates, time, distance (raw values in data-*).
  function card(n, rank, isQuery) {
    const names = info.coordinates;
    const li = el(isQuery ? "div" : "li", {
      class: "tile" + (!isQuery && n.tile_y === queryTile[0] && n.tile_x === queryTile[1]
                       && n.time === queryTile[2] ? " self" : ""),
      "data-tile-y": n.tile_y, "data-tile-x": n.tile_x,
      "data-y": n[names[0]], "data-x": n[names[1]], "data-time": n.time ?? "",
    });
    if (!isQuery) li.dataset.distance = n.distance;
    const t = n.time && info.times ? info.times.indexOf(n.time) : -1;
    li.appendChild(el("img", {
      src: "tiles/" + n.tile_y + "/" + n.tile_x + ".png" + (t >= 0 ? "?t=" + t : ""),
      alt: "tile " + n.tile_y + ", " + n.tile_x, loading: "lazy"}));
    const head = el("div");
    head.appendChild(el("span", {class: "rank"}, isQuery ? "query" : "#" + rank));
    head.appendChild(document.createTextNode(" tile " + n.tile_y + ", " + n.tile_x));
    li.appendChild(head);
    for (const i of [0, 1]) {
      const where = el("div", {class: "where"});
      where.appendChild(document.createTextNode(names[i] + " "));
      where.appendChild(el("span", {class: i ? "coord-x" : "coord-y"}, fmt(n[names[i]])));
      where.appendChild(document.createTextNode(unit(i)));
      li.appendChild(where);
    }
    if (n.time) li.appendChild(el("div", {class: "time"}, n.time));
    if (!isQuery) {
      li.appendChild(el("div", {class: "distance"}, "d = " + Number(n.distance).toFixed(4)));
    }
    return li;
  }

  let queryTile = [null, null, null];

  function render(body, url) {
    const q = body.query;
    queryTile = [q.tile_y, q.tile_x, q.time];
    $("query-tile").replaceChildren(card(q, 0, true));
    const list = $("neighbours");
    list.replaceChildren(...body.neighbours.map((n, i) => card(n, i + 1, false)));
    $("count").textContent = "(k = " + body.neighbours.length + ")";
    $("json-link").href = url;
    const markers = $("markers");
    markers.replaceChildren();
    // Neighbours last-to-first, so that the nearest are drawn on top.
    for (let i = body.neighbours.length - 1; i >= 0; i--) {
      const n = body.neighbours[i];
      const [top, left] = tilePosition(n.tile_y, n.tile_x);
      const m = el("div", {class: "marker", title: "#" + (i + 1) + " d = " +
                           Number(n.distance).toFixed(4)}, String(i + 1));
      m.style.top = top + "%"; m.style.left = left + "%";
      markers.appendChild(m);
    }
    // The query tile outlined (centred on the tile, one tile wide and high).
    const [top, left] = tilePosition(q.tile_y, q.tile_x);
    const qm = el("div", {class: "marker query", title: "query tile"});
    qm.style.top = top + "%"; qm.style.left = left + "%";
    qm.style.height = 100 / info.tiles[0] + "%"; qm.style.width = 100 / info.tiles[1] + "%";
    markers.appendChild(qm);
    $("error").hidden = true;
    $("results").hidden = false;
  }

  async function search() {
    const params = new URLSearchParams();
    params.set(param(0), $("coord-y").value);
    params.set(param(1), $("coord-x").value);
    params.set("k", $("k").value);
    if (info.times) params.set("time", info.times[timeIndex()]);
    const url = "search/tile?" + params.toString();
    const mine = ++sequence;
    setState("searching");
    let response, body = null;
    try {
      response = await fetch(url, {headers: {Accept: "application/json"}});
      try { body = await response.json(); } catch (e) { body = null; }
    } catch (e) {
      if (mine !== sequence) return;
      showError("the search server did not answer (" + e + ").");
      setState("error");
      return;
    }
    if (mine !== sequence) return;
    if (!response.ok || !body || !body.neighbours) {
      showError(errorMessage(response.status, body));
      setState("error");
      return;
    }
    render(body, url);
    setState("done");
  }

  function setup() {
    const names = info.coordinates;
    $("cube-name").textContent = "\u2014 " + info.cube;
    $("about").textContent = "Searching " + info.variable + " (" + info.tiles[0] + " \u00d7 " +
      info.tiles[1] + " tiles of " + info.tile_size + " \u00d7 " + info.tile_size +
      " cells" + (info.times ? ", " + info.times.length + " time steps" : "") + ", " +
      info.index.kind + " index of " + info.index.count + " vectors). The map shows " +
      info.shown + ".";
    $("label-y").textContent = label(0);
    $("label-x").textContent = label(1);
    $("k").max = info.index.count;
    if (info.times) {
      const select = $("time");
      info.times.forEach((t, i) => select.appendChild(el("option", {value: i}, t)));
      $("time-field").hidden = false;
      select.addEventListener("change", showOverview);
    }
    const img = $("overview");
    img.width = info.width; img.height = info.height;
    img.addEventListener("load", () => {
      if (document.body.dataset.state === "loading") setState("ready");
    });
    img.addEventListener("click", (event) => {
      const [y, x] = pointOf(cellOf(event));
      $("coord-y").value = Number(y.toPrecision(12));
      $("coord-x").value = Number(x.toPrecision(12));
      search();
    });
    img.addEventListener("mousemove", (event) => {
      const cell = cellOf(event);
      const [y, x] = pointOf(cell);
      const ty = Math.floor(cell[0] / info.tile_size), tx = Math.floor(cell[1] / info.tile_size);
      $("cursor").textContent = names[0] + " " + fmt(y) + unit(0) + ", " + names[1] + " " +
        fmt(x) + unit(1) + "  (tile " + ty + ", " + tx + ")";
    });
    $("query").addEventListener("submit", (event) => { event.preventDefault(); search(); });
    drawAxes();
    showOverview();
  }

  fetch("overview.json").then((r) => {
    if (!r.ok) throw new Error("overview.json: " + r.status);
    return r.json();
  }).then((data) => { info = data; setup(); }).catch((e) => {
    $("about").textContent = "";
    showError("the page could not load the cube's overview (" + e.message + ").");
    setState("error");
  });
})();
