"""Pipeline and documentation commands: demo, card, catalog, reference, samples."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from esdc.cards import data_card, model_card, write_card
from esdc.catalog import update_catalog, validate_catalog
from esdc.cli._common import app, out, samples_app, user_errors
from esdc.demo import run_demo
from esdc.errors import EsdcError
from esdc.reference import render
from esdc.samples import SAMPLES, cache_dir, fetch


@app.command()
@user_errors
def demo(
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder.")] = Path("out/demo"),
    full: Annotated[bool, typer.Option(help="Full 0.25 degree grid (default 0.5).")] = False,
    scheduler: Annotated[str | None, typer.Option(help="Dask scheduler address.")] = None,
    epochs: Annotated[int | None, typer.Option(help="Encoder epochs.")] = None,
) -> None:
    """Build the Earth cube, train an encoder, embed, index, search: the whole pipeline."""
    s = run_demo(out_dir, full, scheduler, lambda m: out.print(m, highlight=False), epochs)
    out.print(f"\n[bold]done in {s['total_s']} s[/] -> {out_dir / 'summary.json'}")
    out.print(f"cube {s['cube']} ({len(s['variables'])} variables), verify problems: "
              f"{len(s['verify_problems'])}", highlight=False)
    enc = s["encoder"]
    out.print(f"encoder run {enc['run_id']}: {enc['metric']} {enc['test']:.4f} (untrained "
              f"{enc['baseline']:.4f})", highlight=False)
    out.print(f"index: {s['index']['count']} tiles ({s['index']['kind']})", highlight=False)
    for label, ev in s["search_evaluation"].items():
        p, m = ev.get("precision_at_k", {}), ev.get("macro_precision_at_k", {})
        out.print(f"precision@10 by {label}: embedding {p.get('embedding', float('nan')):.3f}, "
                  f"raw-pixel PCA {p.get('pca_pixels', float('nan')):.3f}, random "
                  f"{p.get('random', float('nan')):.3f}; macro "
                  f"{m.get('embedding', float('nan')):.3f}, {m.get('pca_pixels', float('nan')):.3f}"
                  f" ({ev.get('queries')} held-out queries)", highlight=False)
    out.print(f"pictures: {Path(s['pictures'][0]).parent}", highlight=False)


@app.command()
@user_errors
def card(
    cube_or_run: Annotated[str, typer.Argument(help="A cube (an existing path: data card) or "
                                               "an MLflow run id (model card).")],
    tracking_uri: Annotated[str | None, typer.Option(help="MLflow tracking URI of the run "
                                                     "(default: sqlite:///mlruns.db here).")]
    = None,
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the Markdown here "
                                                  "(default: print it).")] = None,
) -> None:
    """Write the data card of a cube or the model card of a training run (Markdown)."""
    path = Path(cube_or_run)
    if path.exists():
        text = data_card(path)
    else:
        try:
            text = model_card(cube_or_run, tracking_uri)
        except EsdcError as exc:
            raise EsdcError(f"{cube_or_run}: no cube at that path, and {exc}") from None
    if out_path is None:
        print(text)
        return
    write_card(text, out_path)
    kind = "data" if path.exists() else "model"
    out.print(f"wrote the {kind} card of {cube_or_run} to {out_path}", highlight=False)


@app.command()
@user_errors
def catalog(
    cubes: Annotated[list[Path] | None, typer.Argument(help="Cubes to add or replace "
                                                       "(default: every *.zarr beside the "
                                                       "catalog).")] = None,
    out_path: Annotated[Path, typer.Option("--out", help="Catalog file; updated when it "
                                           "exists.")] = Path("cubes/catalog.json"),
    cards: Annotated[bool, typer.Option(help="Write each cube's data card beside its "
                                        "Item.")] = True,
) -> None:
    """Write or update a self-contained STAC catalog of built cubes (one Item per cube)."""
    names = list(cubes or sorted(p for p in out_path.parent.glob("*.zarr") if p.is_dir()))
    if not names:
        raise EsdcError(f"no cubes given and no *.zarr in {out_path.parent}; name the cubes "
                        "to catalog.")
    cat = update_catalog(names, out_path, cards=cards)
    report = validate_catalog(cat)
    items = sorted(i.id for i in cat.get_items(recursive=True))
    out.print(f"{out_path}: {len(items)} item(s) ({', '.join(items)}); STAC core schemas "
              "valid", highlight=False, soft_wrap=True)
    for uri in report["skipped"]:
        out.print(f"  not checked (schema not reachable): {uri}", highlight=False,
                  soft_wrap=True)


@app.command()
@user_errors
def reference(
    out_path: Annotated[Path | None, typer.Option("--out", help="Write the Markdown here "
                                                  "(default: print it).")] = None,
) -> None:
    """Print the recipe and training-config reference generated from their schemas."""
    text = render()
    if out_path is None:
        typer.echo(text, nl=False)
    else:
        out_path.write_text(text)
        out.print(f"wrote {out_path}", highlight=False)


@samples_app.command("list")
def samples_list(as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """List the registered real samples and whether they are cached."""
    rows = []
    for s in SAMPLES.values():
        cached = (cache_dir() / s.name / s.filename).exists()
        rows.append({**s.provenance(), "cached": cached})
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for r in rows:
        mark = "cached" if r["cached"] else "-"
        out.print(f"{r['name']:<24} {mark:<7} {r['product']} [{r['obtained_from']}]",
                  highlight=False)


@samples_app.command("fetch")
@user_errors
def samples_fetch(
    names: Annotated[list[str] | None, typer.Argument(help="Sample names (default: all).")]
    = None,
    all_: Annotated[bool, typer.Option("--all", help="Fetch every sample.")] = False,
    force: Annotated[bool, typer.Option(help="Download again.")] = False,
) -> None:
    """Download samples into the cache (without installing packages) and verify them."""
    if not names and not all_:
        raise EsdcError("name the samples to fetch (see `esdc samples list`) or pass --all.")
    for name, path in fetch(None if all_ else names, force=force).items():
        out.print(f"{name}: {path}", highlight=False)
