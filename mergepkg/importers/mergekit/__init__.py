"""mergekit YAML configs (mergekit-yaml and mergekit-multi) as recipes: `mergepkg import`.

`convert.py` runs the conversion (and holds the public functions, re-exported here);
`documents.py` reads the YAML with line numbers, `context.py` holds the step being built
and the located errors, `refs.py` turns model references into sources and steps,
`models.py` the merged models, `params.py` their parameters, `tokenizer.py` the
tokenizer settings, and `render.py` writes the recipe TOML.
"""

from __future__ import annotations

from mergepkg.importers.mergekit.convert import ImportResult, convert_file, import_mergekit

__all__ = ["ImportResult", "convert_file", "import_mergekit"]
