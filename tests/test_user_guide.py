"""The YAML examples of docs/USER_GUIDE.md are valid recipes and training configs."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from esdc.ml.config import TrainConfig
from esdc.recipe import Recipe, parse_recipe

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "USER_GUIDE.md"


def _yaml_blocks() -> list[str]:
    return re.findall(r"```yaml\n(.*?)```", GUIDE.read_text(), re.S)


def test_guide_recipe_and_config_parse() -> None:
    blocks = _yaml_blocks()
    assert len(blocks) == 3
    recipe = parse_recipe(blocks[0], "USER_GUIDE.md")
    assert recipe.grid.to_grid().shape == (35, 50)
    assert [v.name for s in recipe.sources for v in s.variables] == ["altitude", "land_fraction"]
    # the archive example is the sources of recipes/oisst.yaml
    oisst = yaml.safe_load((GUIDE.parents[1] / "recipes" / "oisst.yaml").read_text())
    files = Recipe.from_dict({**oisst, **yaml.safe_load(blocks[1])}).sources[0].files
    assert files is not None and files.pattern == oisst["sources"][0]["files"]["pattern"]
    cfg = TrainConfig.model_validate(yaml.safe_load(blocks[2]))
    assert cfg.framework == "sklearn" and cfg.target == "koppen_class"


def test_guide_names_real_commands() -> None:
    from typer.main import get_command

    from esdc.cli import app

    commands = set(get_command(app).commands)  # type: ignore[attr-defined]
    code = "\n".join(re.findall(r"```bash\n(.*?)```", GUIDE.read_text(), re.S))
    used = set(re.findall(r"^esdc ([a-z-]+)", code, re.M))
    assert used and used <= commands, used - commands
