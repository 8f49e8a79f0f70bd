"""Make the small example models under recipes/models/ (seeded, CPU, seconds).

    python scripts/make_example_models.py

base: a random tiny Llama (4 layers, hidden 64); math and chat: base plus small
seeded deltas, standing in for fine-tunes. They exist so the example recipes build
offline; they are not trained.
"""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tests"))
from tiny import make_model  # noqa: E402  (the same factory the tests use)


def main() -> None:
    out = ROOT / "recipes" / "models"
    shutil.rmtree(out, ignore_errors=True)
    base = make_model(out / "base", seed=0, hidden=64, dtype=torch.bfloat16)
    make_model(out / "math", seed=1, base=base, hidden=64, dtype=torch.bfloat16)
    make_model(out / "chat", seed=2, base=base, hidden=64, dtype=torch.bfloat16)
    make_model(out / "code", seed=3, base=base, hidden=64, dtype=torch.bfloat16)


if __name__ == "__main__":
    main()
