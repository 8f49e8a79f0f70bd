"""What the importer's tests share: the saved configs, converting a config written to a
temporary folder, and finding the line an error should name."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from mergepkg.errors import RecipeError
from mergepkg.importers.mergekit.convert import convert
from mergepkg.recipe.parse import parse_recipe

CONFIGS = Path(__file__).parent / "mergekit_configs"


def line_of(path_or_text, needle: str) -> int:
    text = path_or_text.read_text() if isinstance(path_or_text, Path) else path_or_text
    for i, line in enumerate(text.splitlines(), 1):
        if needle in line:
            return i
    raise AssertionError(f"{needle!r} not found")


def imported(yaml_text: str, tmp_path: Path, name: str = "config.yml", **kw):
    """Convert a config written to tmp_path; return (result, parsed recipe)."""
    path = tmp_path / name
    path.write_text(textwrap.dedent(yaml_text))
    result = convert(path.read_text(), path, cwd=tmp_path, **kw)
    recipe = parse_recipe(result.text, kw.get("recipe_dir", tmp_path) / "recipe.toml")
    return result, recipe


def import_error(yaml_text: str, tmp_path: Path) -> tuple[RecipeError, str]:
    path = tmp_path / "bad.yml"
    text = textwrap.dedent(yaml_text)
    path.write_text(text)
    with pytest.raises(RecipeError) as info:
        convert(text, path, cwd=tmp_path)
    return info.value, text
