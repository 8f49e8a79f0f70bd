"""Pitfall warnings: a recipe that builds but likely not into what was meant
(docs/warnings.md). `params.py` reads the recipe alone (MP1xx), `layouts.py` a step's
layout (MP2xx); the MP3xx checks watch tensor values in the engine
(`engine/values.py`). `pitfall.py` is the warning itself, placed in the recipe, and
what a recipe allows.
"""
