"""The recipe reference is generated from the schemas and the committed copy is current."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from esdc.cli import app
from esdc.recipe import Recipe, SourceSpec, VariableSpec
from esdc.reference import render

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "RECIPE_REFERENCE.md"


def test_committed_reference_is_current() -> None:
    assert DOC.read_text() == render(), (
        "docs/RECIPE_REFERENCE.md is stale: run `esdc reference --out docs/RECIPE_REFERENCE.md`")


def test_every_recipe_field_is_described() -> None:
    text = render()
    for model in (Recipe, SourceSpec, VariableSpec):
        assert f"## {model.__name__}" in text
        for name, field in model.model_fields.items():
            assert field.description, f"{model.__name__}.{name} has no docstring"
            row = next(line for line in text.splitlines()
                       if line.startswith(f"| `{name}` |") and field.description.split()[0]
                       in line)
            assert row.count("|") >= 5


def test_reference_lists_functions_samples_and_train_config() -> None:
    text = render()
    for needle in ("| `slope` |", "| `roughness` |", "| `bmng` |", "## TrainConfig",
                   "`bucket_average`", "**required**"):
        assert needle in text


def test_cli_writes_reference(tmp_path: Path) -> None:
    out = tmp_path / "ref.md"
    res = CliRunner().invoke(app, ["reference", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert out.read_text() == render()
