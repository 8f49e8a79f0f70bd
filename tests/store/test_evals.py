"""store/evals.py: results by (model key, task key); the rows model cards show are the
current protocols' only."""

from __future__ import annotations

import json

from mergepkg.store.evals import EvalCache, Result

MODEL = "sha256:" + "ab" * 32
CONTENT = "cd" * 32  # a task file's sha256: exact match's first protocol filed its results under it


def test_an_exact_match_score_of_the_first_protocol_is_left_out_of_the_rows(tmp_path):
    """A card built after an upgrade listed the exact-match score an earlier mergepkg
    cached (decoded with the model's repetition_penalty), which `eval` no longer reuses."""
    cache = EvalCache(tmp_path)
    folder = cache.root / MODEL.removeprefix("sha256:")
    folder.mkdir(parents=True)
    old = {"task": "arith", "metric": "exact_match", "value": 0.25, "n": 8}  # as earlier versions wrote it
    (folder / f"{CONTENT}.json").write_text(json.dumps(old))
    ppl = {"task": "wiki", "metric": "perplexity", "value": 12.5, "n": 300}  # its protocol never changed
    (folder / f"{'ef' * 32}.json").write_text(json.dumps(ppl))
    assert cache.rows(MODEL) == [ppl]
    assert cache.get(MODEL, "ef" * 32) == Result(**ppl)  # still reused by `eval`
    cache.put(MODEL, "12" * 32, Result("arith", "exact_match", 0.5, 8))  # the current protocol's
    assert cache.rows(MODEL) == [{"task": "arith", "metric": "exact_match", "value": 0.5, "n": 8}, ppl]
    assert cache.get(MODEL, "12" * 32) == Result("arith", "exact_match", 0.5, 8)


def test_a_file_that_is_no_result_is_left_out_of_the_rows(tmp_path):
    cache = EvalCache(tmp_path)
    cache.put(MODEL, "12" * 32, Result("arith", "exact_match", 0.5, 8))
    folder = cache.root / MODEL.removeprefix("sha256:")
    (folder / "torn.json").write_text('{"task": "ari')
    (folder / "list.json").write_text("[1]")
    assert [r["task"] for r in cache.rows(MODEL)] == ["arith"]
    assert cache.get(MODEL, "list") is None
