"""The demo's encoder reads layers its cube recipe makes, never an evaluation label."""

from __future__ import annotations

import yaml

from esdc.ml.config import TrainConfig
from esdc.recipe import load_recipe
from tests.conftest import ROOT

LABELS = {"koppen_class", "land_sea_mask", "mare_highland"}


def test_demo_encoder_inputs_are_static_non_label_layers_of_the_earth_recipe():
    cfg = TrainConfig.model_validate(yaml.safe_load(
        (ROOT / "recipes" / "train" / "encoder_vicreg.yaml").read_text(encoding="utf-8")))
    recipe = load_recipe(ROOT / "recipes" / "earth.yaml")
    made = {v.name for s in recipe.sources for v in s.variables}
    derived = {d.name: d for d in recipe.derived}
    assert set(cfg.inputs) <= made | set(derived)
    assert not set(cfg.inputs) & LABELS
    # the climate enters as static climatologies of the monthly Linke turbidity
    climate = [derived[n] for n in cfg.inputs if n in derived]
    assert {d.params["statistic"] for d in climate} == {"mean", "harmonic_cos", "harmonic_sin"}
    assert all(d.function == "climatology" and d.inputs == ["linke_turbidity"]
               for d in climate)
    assert cfg.augment.crop == (8, 8) and not cfg.augment.flip_rotate
