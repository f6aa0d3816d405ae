"""Data cards of cubes and model cards of training runs, as Markdown.

A **data card** is written from a cube's own metadata: title and summary, every
source's upstream product, mission, instrument, licence and citation
(``esdc_sources``), the grid (``esdc_grid``), the variables with their units and
class meanings, and the provenance (recipe SHA-256, library versions, build time).

A **model card** is written from an MLflow run of :func:`esdc.ml.train.train`: the
cube and recipe hash it learned from (run tags), the held-out metric against the
trivial baseline, the parameters, intended use, caveats, and the run's level on
the Machine Learning Technology Readiness Levels (MLTRL; Lavin et al. 2022,
Nature Communications 13, 6039, doi:10.1038/s41467-022-33128-9), stated as
measured, not as hoped: at most level 4 (proof of concept), since no run is
validated against external data.

Nothing here computes on the cube's data: only metadata are read.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from pathlib import Path
from typing import Any

from esdc.conventions import (
    ATTR_DERIVED,
    ATTR_GRID,
    ATTR_INPUTS,
    ATTR_MODEL_RUN,
    ATTR_RECIPE,
    ATTR_RECIPE_SHA256,
    ATTR_RESAMPLING,
    ATTR_ROLE,
    ATTR_SOURCE,
    ATTR_SOURCES,
    ATTR_TILE_SIZE,
    ATTR_VERSIONS,
    json_attr,
    license_of,
)
from esdc.errors import EsdcError, OutputPathError
from esdc.grid import Grid
from esdc.ml.tracking import default_tracking_uri
from esdc.storage import open_cube, resolve

__all__ = ["data_card", "mltrl_level", "model_card", "write_card"]

#: Display names of the self-supervised objectives (``model.kind`` of ``task: embedding``).
_SSL_NAMES = {"simsiam": "SimSiam", "vicreg": "VICReg"}
_MLTRL = "Lavin, A. et al. (2022), Technology readiness levels for machine learning " \
    "systems, Nature Communications 13, 6039, doi:10.1038/s41467-022-33128-9"


def _cell(value: Any) -> str:
    """Text safe inside a Markdown table cell."""
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\n", " ").strip()


def _citation(source: dict[str, Any]) -> str:
    """One "how to cite" item of a source: its citation, DOI (as a link) and landing page."""
    what = source.get("product") or source.get("source")
    text = f"- {what}: {source.get('citation') or 'no citation recorded'}"
    if source.get("doi"):
        text += f"; DOI [{source['doi']}](https://doi.org/{source['doi']})"
    if source.get("url"):
        text += f"; <{source['url']}>"
    return text


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_cell(v) for v in r) + " |" for r in rows]
    return lines


def _json_attr(attrs: dict[str, Any], key: str, default: Any) -> Any:
    # A card describes what is there: an unreadable attribute is reported as missing.
    try:
        return json_attr(attrs, key, default)
    except (TypeError, ValueError):
        return default


def _flag_text(attrs: dict[str, Any]) -> str:
    values = attrs.get("flag_values")
    if values is None:
        return ""
    meanings = attrs.get("flag_meanings", "")
    names = meanings.split() if isinstance(meanings, str) else list(meanings)
    vals = list(values) if hasattr(values, "__iter__") else [values]
    return ", ".join(f"{int(v) if float(v).is_integer() else v} = {n}"
                     for v, n in zip(vals, names, strict=False))


def _grid_lines(grid: dict[str, Any] | None) -> list[str]:
    if not grid:
        return ["The cube records no grid (`esdc_grid` is missing)."]

    g = Grid.from_dict(grid)
    dx, dy = g.resolution
    west, south, east, north = g.bbox
    ydim, xdim = g.dims
    units = "degrees" if g.is_geographic else ("arcsec" if g.is_helioprojective else "CRS units")
    rows = [["body", g.body], ["CRS", g.crs],
            ["shape", f"{ydim} = {g.shape[0]}, {xdim} = {g.shape[1]}"],
            ["cell size", f"{dx:g} x {dy:g} {units}"],
            ["bounding box (W, S, E, N)", f"{west:g}, {south:g}, {east:g}, {north:g} {units}"]]
    if g.time is not None and len(g.time):
        first, last = str(g.time[0])[:10], str(g.time[-1])[:10]
        rows.append(["time", f"{len(g.time)} steps, {first} .. {last}"])
        if g.time_bounds:
            rows.append(["time cells", f"{str(g.time_bounds[0][0])[:10]} .. "
                                       f"{str(g.time_bounds[-1][1])[:10]} (bounds)"])
    else:
        rows.append(["time", "none (static cube)"])
    return _table(["property", "value"], rows)


def data_card(cube: Any) -> str:
    """A Markdown data card generated from a cube's metadata.

    Parameters
    ----------
    cube : xarray.Dataset or str or path-like
        An opened cube (:func:`esdc.open_cube`) or the path of its Zarr store.

    Returns
    -------
    str
        Markdown: title and summary, sources (product, mission, instrument, licence,
        citation, file checksum), grid, variables (dims, units, long name, class
        meanings), provenance (recipe SHA-256, versions, build time), how to cite, and
        the recipe itself.

    Raises
    ------
    EsdcError
        If ``cube`` is a path with no cube.
    """
    import xarray as xr

    version = None
    if isinstance(cube, xr.Dataset):
        ds, where = cube, None
    else:
        target = resolve(cube)
        version = target.current_version()  # a versioned (Icechunk) cube's newest version
        ds, where = target.open(version=version), str(cube)
    a = ds.attrs
    title = a.get("title") or "esdc cube"
    sources = _json_attr(a, ATTR_SOURCES, [])
    grid = _json_attr(a, ATTR_GRID, None)
    versions = _json_attr(a, ATTR_VERSIONS, {})
    sha = a.get(ATTR_RECIPE_SHA256) or ""
    created = a.get("date_created", "")
    lines = [f"# Data card: {title}", ""]
    if where:
        lines += [f"Cube: `{where}`", ""]
    lines += [a.get("summary") or "(no summary recorded)", ""]
    lines += [f"Licence of the cube: {a.get('license') or 'not recorded'}. Each source keeps "
              "its own licence (below); a use of the cube must respect all of them.", ""]

    lines += ["## Sources", ""]
    if sources:
        lines += _table(["source", "product", "mission", "instrument", "licence", "variables"],
                        [[s.get("source"), s.get("product", s.get("file")), s.get("mission"),
                          s.get("instrument"), license_of(s) or "not recorded",
                          ", ".join(s.get("variables", []))] for s in sources])
        lines += ["", "Files (checked by SHA-256 when the cube was built):", ""]
        for s in sources:
            got = s.get("obtained_from") or s.get("file", "")
            lines.append(f"- **{s.get('source')}**: `{got}` (SHA-256 `{s.get('sha256', '?')}`)")
    else:
        lines.append("The cube records no sources (a synthetic or hand-made cube).")
    lines.append("")

    lines += ["## Grid", ""] + _grid_lines(grid) + [""]

    lines += ["## Variables", ""]
    rows = []
    for name, v in sorted(ds.data_vars.items(), key=lambda kv: str(kv[0])):
        at = v.attrs
        note = _flag_text(at)
        if at.get(ATTR_ROLE) == "embedding":
            note = (f"tile embedding ({at.get(ATTR_TILE_SIZE)} cells) of "
                    f"{', '.join(at.get(ATTR_INPUTS, []))}; model run "
                    f"{at.get(ATTR_MODEL_RUN, '?')}")
        elif at.get(ATTR_DERIVED):
            note = f"derived: {at[ATTR_DERIVED]}"
        rows.append([f"`{name}`", ", ".join(map(str, v.dims)), str(v.dtype),
                     at.get("units", ""), at.get("long_name", ""),
                     at.get("standard_name", ""), at.get(ATTR_SOURCE, ""),
                     at.get(ATTR_RESAMPLING, ""), note])
    lines += _table(["variable", "dims", "dtype", "units", "long name", "standard name",
                     "source", "resampling", "classes / notes"], rows) + [""]

    lines += ["## Provenance", ""]
    lines += _table(["property", "value"], [
        ["recipe SHA-256", f"`{sha}`" if sha else "not recorded"],
        *([["cube version", f"`{version}` (Icechunk snapshot; `esdc log` lists all)"]]
          if version else []),
        ["built", created or "not recorded"],
        ["history", a.get("history", "")],
        ["conventions", a.get("Conventions", "")],
    ])
    if versions:
        lines += ["", "Library versions at build time: " + ", ".join(
            f"{k} {v}" for k, v in versions.items()) + "."]
    lines.append("")

    lines += ["## How to cite", ""]
    year = created[:4] if created else "n.d."
    lines.append(f"Cite the cube as: *{title}*, built with esdc "
                 f"{versions.get('esdc', '')} ({year}) from the recipe with SHA-256 "
                 f"`{sha or 'not recorded'}`; and cite every upstream product it holds:")
    lines.append("")
    lines += [_citation(s) for s in sources] or ["- (no sources recorded)"]
    lines.append("")
    recipe = a.get(ATTR_RECIPE)
    if recipe:
        lines += ["## Recipe", "", "```yaml", recipe.rstrip(), "```", ""]
    return "\n".join(lines)


# ---------------------------------------------------------------------- model cards
def _client(tracking_uri: str | None) -> Any:
    try:
        from mlflow.tracking import MlflowClient
    except ImportError:
        raise EsdcError("MLflow is not installed: pip install 'esdc[ml]'.") from None

    uri = tracking_uri or default_tracking_uri()
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).exists():
        raise EsdcError(f"no MLflow tracking store at {uri.removeprefix('sqlite:///')}; pass "
                        "tracking_uri=URI (the one `esdc train` used).")
    return MlflowClient(tracking_uri=uri), uri


def _ms(ts: int | None) -> str:
    if not ts:
        return "not recorded"
    return dt.datetime.fromtimestamp(ts / 1000, dt.UTC).isoformat(timespec="seconds")


def _param(params: dict[str, str], key: str, default: Any = None) -> Any:
    if key not in params or params[key] == "None":  # MLflow logs None as "None"
        return default
    try:
        return json.loads(params[key])
    except ValueError:
        return params[key]


def mltrl_level(real_data: bool, beats_baseline: bool | None,
                task: str = "classification") -> tuple[int, str, str]:
    """The MLTRL level a training run supports, with its name and the reason.

    Parameters
    ----------
    real_data : bool
        The cube records upstream sources (real observations, not a synthetic cube).
    beats_baseline : bool or None
        The model beats the trivial baseline on the held-out split (None: unknown).
    task : str
        ``classification``, ``regression`` or ``embedding``; the held-out figure of an
        embedding run is its self-supervised loss, a proxy that cannot show usefulness.

    Returns
    -------
    tuple
        ``(level, name, reason)``. Level 4 (proof of concept) needs real data and a
        held-out result on the task itself better than the trivial baseline; otherwise
        level 3 (system development: tested research code). Higher levels need what no
        esdc run has: validation on external data, a requirements review, monitoring.
    """
    if real_data and beats_baseline and task != "embedding":
        return (4, "proof-of-concept development (research prototype)",
                "trained on real observations and better than the trivial baseline on a "
                "held-out spatial split of the same cube")
    why = []
    if not real_data:
        why.append("the cube records no upstream sources (synthetic data)")
    if task == "embedding":
        why.append("the only held-out figure is the self-supervised loss, a proxy: a loss "
                   "below the untrained network's shows learning, not useful embeddings "
                   "(search quality is measured apart, by `esdc evaluate-search`)")
    elif beats_baseline is False:
        why.append("the model does not beat the trivial baseline on the held-out split")
    elif beats_baseline is None:
        why.append("the run records no held-out comparison with a baseline")
    return (3, "system development (research prototype)",
            "; ".join(why) + "; tested research code, not yet a proof of concept")


def model_card(run_id: str, tracking_uri: str | None = None) -> str:
    """An MLTRL-style Markdown model card of an MLflow training run.

    Parameters
    ----------
    run_id : str
        MLflow run id (as printed by ``esdc train``).
    tracking_uri : str, optional
        MLflow tracking URI; :func:`esdc.ml.tracking.default_tracking_uri` when omitted.

    Returns
    -------
    str
        Markdown: model details, data (cube, recipe SHA-256 from the run's tags, and
        the cube's sources when it is still there), held-out metric against the
        baseline, training curves, parameters, intended use, caveats, MLTRL level.

    Raises
    ------
    EsdcError
        If the tracking store or the run does not exist.
    """
    client, uri = _client(tracking_uri)
    try:
        run = client.get_run(run_id)
    except Exception as exc:  # noqa: BLE001 - MLflow raises several kinds for a bad id
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise EsdcError(f"no MLflow run {run_id!r} in {uri} ({first}).") from None
    info, data = run.info, run.data
    params, metrics, tags = dict(data.params), dict(data.metrics), dict(data.tags)
    try:
        experiment = client.get_experiment(info.experiment_id).name
    except Exception:  # noqa: BLE001
        experiment = str(info.experiment_id)
    name = _param(params, "name", experiment)
    framework = _param(params, "framework", "?")
    task = _param(params, "task", "?")
    model = _param(params, "model", {}) or {}
    kind = model.get("kind") if isinstance(model, dict) else None
    kind = kind or {"sklearn": "random_forest", "keras": "cnn"}.get(framework, "cnn")
    if task == "embedding":
        kind = kind if kind in ("simsiam", "vicreg") else "simsiam"
    inputs = _param(params, "inputs", []) or []
    target = _param(params, "target")
    split = _param(params, "split", {}) or {}
    metric = {"classification": "accuracy", "regression": "rmse"}.get(task, f"{kind}_loss")
    test = metrics.get(f"test_{metric}")
    base = metrics.get(f"baseline_{metric}")
    higher = metric == "accuracy"
    beats = None if test is None or base is None else (test > base if higher else test < base)

    cube_path = tags.get("esdc.cube", "")
    sha = tags.get("esdc.recipe_sha256", "")
    cube_sources: list[dict[str, Any]] = []
    cube_note = "The cube is no longer at that path; its identity rests on the recipe hash."
    real = bool(sha)  # a cube built from a recipe; checked against the cube when it is there
    if cube_path and Path(cube_path).exists():
        try:
            attrs = open_cube(cube_path).attrs
        except (OSError, ValueError, EsdcError):
            attrs = None
        if attrs is not None:
            cube_sources = _json_attr(attrs, ATTR_SOURCES, [])
            real = bool(cube_sources)
            now = attrs.get(ATTR_RECIPE_SHA256, "")
            cube_note = ("The cube is still at that path and has the same recipe hash."
                         if now == sha else f"The cube now at that path has recipe hash "
                         f"`{now or 'none'}`, not the run's: it was rebuilt from another "
                         "recipe, so the run's data are not the cube's present data.")
    level, level_name, level_why = mltrl_level(real, beats, task)

    title = f"Model card: {name} ({framework} {kind}, {task})"
    lines = [f"# {title}", "",
             f"MLflow run `{info.run_id}` in experiment `{experiment}` ({uri}); status "
             f"{info.status}; started {_ms(info.start_time)}, ended {_ms(info.end_time)}.", ""]
    lines += ["## MLTRL", "",
              f"**Level {level}: {level_name}.** {level_why[0].upper()}{level_why[1:]}.", "",
              "Not higher: there is no validation on data from outside the cube, no review "
              "against requirements of a real use, no monitoring; each level gate in MLTRL "
              "asks for a review, and none is recorded. Reviewers: none recorded.", "",
              f"Framework: {_MLTRL}.", ""]

    lines += ["## Model details", ""]
    what = {"classification": f"per-pixel classification of `{target}`",
            "regression": f"per-pixel regression of `{target}`",
            "embedding": f"self-supervised tile encoder ({_SSL_NAMES.get(kind, kind)}) for "
                         "reverse image search"
            }.get(task, task)
    rows = [["task", what], ["framework / model", f"{framework} / {kind}"],
            ["inputs (channels)", ", ".join(f"`{i}`" for i in inputs)],
            ["target", f"`{target}`" if target else "none (self-supervised)"],
            ["patch", _param(params, "patch", "")],
            ["device", tags.get("esdc.device", "not recorded")],
            ["artifacts", f"{info.artifact_uri}/model"]]
    try:
        versions = client.search_model_versions(f"run_id='{info.run_id}'")
    except Exception:  # noqa: BLE001 - registry unsupported by the store
        versions = []
    if versions:
        rows.append(["registered as", ", ".join(f"`models:/{v.name}/{v.version}`"
                                                for v in versions)])
    lines += _table(["property", "value"], rows) + [""]

    lines += ["## Data", ""]
    lines += _table(["property", "value"], [
        ["cube", f"`{cube_path}`" if cube_path else "not recorded"],
        ["cube title", tags.get("esdc.cube_title", "") or "not recorded"],
        ["recipe SHA-256", f"`{sha}`" if sha else "not recorded (synthetic cube)"],
        *([["cube version", f"`{tags['esdc.cube_version']}` (Icechunk snapshot trained on)"]]
          if tags.get("esdc.cube_version") else []),
        ["split", f"spatial blocks of {split.get('block', '?')} cells, train / validation / "
                  f"test fractions {split.get('fractions', '?')}, seed {split.get('seed', '?')}"],
    ])
    lines += ["", cube_note if cube_path else ""]
    if cube_sources:
        lines += ["", "Upstream products in the cube (see its data card, `esdc card CUBE`):", ""]
        lines += [f"- {s.get('product', s.get('source'))} — licence: "
                  f"{license_of(s) or 'not recorded'}" for s in cube_sources]
    lines.append("")

    held_out = "validation split (the encoder's held-out figure)" if task == "embedding" \
        else "test split"
    lines += [f"## Metrics (held-out {held_out})", ""]
    better = "higher is better" if higher else "lower is better"
    base_what = {"accuracy": "majority class of the training pixels",
                 "rmse": "mean of the training pixels",
                 "simsiam_loss": "the same network before training",
                 "vicreg_loss": "the same network before training"}[metric]
    if test is None or base is None:
        lines.append(f"The run records no `test_{metric}` / `baseline_{metric}` (it may have "
                     "failed or still run).")
    else:
        lines += _table(["metric", "model", f"baseline ({base_what})", "difference",
                         "beats baseline"],
                        [[f"{metric} ({better})", f"{test:.4f}", f"{base:.4f}",
                          f"{test - base:+.4f}", "yes" if beats else "no"]])
    history = {k: v for k, v in metrics.items()
               if not k.startswith(("test_", "baseline_", "cv_"))}
    if history:
        lines += ["", "Last value of each training curve (per epoch in MLflow):", ""]
        lines += _table(["metric", "last value"], [[k, f"{v:.4f}"]
                                                   for k, v in sorted(history.items())])
    lines.append("")

    scoring = tags.get("esdc.search_scoring")
    if scoring:
        best = {k.removeprefix("best_"): v for k, v in params.items() if k.startswith("best_")}
        lines += ["## Hyperparameter search", "",
                  f"{int(metrics.get('cv_candidates', 0))} candidates of the config's "
                  "`search:` block, each cross-validated on whole spatial blocks of the "
                  f"training split (folds never share a block), fitted on the Dask workers "
                  f"(joblib backend `{tags.get('esdc.search_backend', '?')}`); the best was "
                  "refitted on the whole training split and tested once. Every candidate "
                  "is a child run; `search/cv_results.csv` and `search/cv_folds.csv` are "
                  "artifacts of this run.", ""]
        cv, sd = metrics.get(f"cv_{scoring}"), metrics.get(f"cv_{scoring}_std")
        rows = [[k, v] for k, v in sorted(best.items())]
        if cv is not None:
            rows.append([f"spatial-CV {scoring} (mean ± std over folds)",
                         f"{cv:.4f} ± {sd or 0:.4f}"])
        lines += _table(["best", "value"], rows)
        lines.append("")

    lines += ["## Parameters", ""]
    lines += _table(["parameter", "value"], [[k, v] for k, v in sorted(params.items())])
    lines.append("")

    lines += ["## Intended use", ""]
    if task == "embedding":
        lines.append("Embedding tiles of this cube for reverse image search (`esdc embed`, "
                     "`esdc index`, `esdc search`): finding places that look alike in the "
                     "cube's inputs. Research and teaching.")
    else:
        lines.append(f"Research and teaching: a reproducible example of learning "
                     f"`{target}` from other layers of a harmonized cube, and a reference "
                     "for comparing methods on the same split.")
    lines += ["", "Out of scope: operational mapping or monitoring, decisions about specific "
              "places, and use on other grids, resolutions, regions or periods without new "
              "validation.", ""]

    lines += ["## Caveats", ""]
    caveats = [
        f"Spatial block split: the test blocks ({split.get('block', '?')} cells) are held out "
        "from the same cube, period and sources as the training blocks. Block splits reduce "
        "but do not remove spatial autocorrelation (Roberts et al. 2017, Ecography 40, "
        "913-929); the score says nothing about other regions, periods or sensors.",
        "Trained from scratch on this cube only: no pretraining, a small model, few epochs; "
        "not tuned.",
        "No external validation: the test labels come from the cube itself.",
    ]
    if target == "koppen_class":
        caveats.append("The target `koppen_class` is itself a model product (Beck et al. "
                       "2018 classification), resampled to the grid by cell mode: the model "
                       "learns that map, errors included, not observed climate.")
    elif target:
        caveats.append(f"The target `{target}` is a resampled upstream product with its own "
                       "errors; the model learns that product, not ground truth.")
    if metric == "accuracy":
        caveats.append("Accuracy over pixels is dominated by the most frequent class (the "
                       "baseline shows its share); per-class scores are not in the run.")
    if framework == "sklearn":
        caveats.append(f"Fitted in memory on at most {_param(params, 'max_train_pixels', '?')} "
                       "training pixels (a uniform sample); each pixel is classified from its "
                       "own values only, without neighbours.")
    if task == "embedding":
        caveats.append(f"The baseline of the {_SSL_NAMES.get(kind, kind)} loss is the "
                       "untrained network: a lower loss shows learning, not search quality; "
                       "see `esdc evaluate-search`.")
    lines += [f"- {c}" for c in caveats] + [""]
    return "\n".join(lines)


def write_card(text: str, out: str | os.PathLike[str]) -> Path:
    """Write a card to ``out`` (folders created).

    Raises
    ------
    EsdcError
        If the file cannot be written.
    """
    p = Path(out)
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    except OSError as exc:
        raise OutputPathError(f"out={p}: cannot write the card ({exc.strerror or exc}).") from None
    return p
