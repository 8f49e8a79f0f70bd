"""Write the demo's validation split: `recipes/demo-tune/tasks/{upper,inc}_val.jsonl`.

`mergepkg tune` searches on these and reports on the held-out `recipes/demo/tasks/{upper,inc}.jsonl`,
which the search never reads. The prompts come from the same generator as the
training data (`scripts/train_demo.py`'s `example`), from their own seed
(`val-<task>`), with every held-out prompt and every repeat skipped; 200 per skill.
Deterministic: running it again writes the same bytes.
"""

from __future__ import annotations

import json
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from train_demo import example, held_out

OUT = Path(__file__).parents[1] / "recipes" / "demo-tune" / "tasks"

SIZE = 200


def validation(task: str) -> list[tuple[str, str]]:
    rng, seen, out = random.Random(f"val-{task}"), {p for p, _ in held_out(task)}, []
    while len(out) < SIZE:
        prompt, answer = example(task, rng)
        if prompt not in seen:
            seen.add(prompt)
            out.append((prompt, answer))
    return out


def main() -> None:
    for task in ("upper", "inc"):
        lines = [json.dumps({"prompt": p, "answer": a}) for p, a in validation(task)]
        (OUT / f"{task}_val.jsonl").write_text("\n".join(lines) + "\n", encoding="utf-8")


if __name__ == "__main__":
    main()
