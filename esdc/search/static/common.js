// esdc search pages (map page and overview page): helpers both use. No libraries.
"use strict";
window.esdcCommon = (function () {
  // An element with attributes and text.
  function el(tag, attrs, text) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    if (text !== undefined) e.textContent = text;
    return e;
  }
  // A number with at most 6 decimals, no trailing zeros.
  function fmt(v) { return String(Number(Number(v).toFixed(6))); }
  // Query parameter name of coordinate i (the API takes lat/lon or y/x).
  function param(info, i) {
    const n = info.coordinates[i];
    return ["lat", "lon", "y", "x"].includes(n) ? n : ["y", "x"][i];
  }
  // " m", " arcsec", ... after a value of coordinate i (nothing for degrees).
  function unit(info, i) {
    const u = info.units[i] || "";
    return u.startsWith("degree") || u === "" ? "" : " " + u;
  }
  // The message of an error answer: esdc's detail string, or FastAPI's list of errors.
  function errorMessage(status, body) {
    if (body && typeof body.detail === "string") return body.detail;
    if (body && Array.isArray(body.detail)) {
      return body.detail.map((d) => {
        const where = (d.loc || []).slice(1).join(".");
        return (where ? where + ": " : "") + d.msg;
      }).join("; ");
    }
    return "the server answered " + status + ".";
  }
  return {el: el, fmt: fmt, param: param, unit: unit, errorMessage: errorMessage};
})();
