"""lm-eval through its Python API on a local task (a YAML and a JSONL), offline."""

from __future__ import annotations

from pathlib import Path

import pytest

from mergepkg.errors import RecipeError
from mergepkg.eval.harness import load_harness_task
from mergepkg.eval.run import evaluate_model, run_task
from mergepkg.eval.tasks import load_task
from mergepkg.store.evals import EvalCache
from mergepkg.store.session import Session

pytestmark = pytest.mark.slow
DEMO = Path(__file__).resolve().parents[2] / "recipes" / "demo"
YAML = """task: demo_upper_local
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
test_split: test
output_type: generate_until
doc_to_text: "{{{{prompt}}}}"
doc_to_target: "{{{{answer}}}}"
generation_kwargs:
  until: ["\\n"]
  do_sample: false
  max_gen_toks: 24
metric_list:
  - metric: exact_match
    aggregation: mean
    higher_is_better: true
metadata:
  version: 1.0
"""


def test_local_task_matches_exact_match_and_is_cached(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    data = tmp_path / "upper.jsonl"
    data.write_text("\n".join((DEMO / "tasks" / "upper.jsonl").read_text().splitlines()[:16]) + "\n")
    (tmp_path / "tasks").mkdir()
    (tmp_path / "tasks" / "demo_upper_local.yaml").write_text(YAML.format(data=data))
    session, cache = Session(), EvalCache(Session().settings.home)
    task = load_harness_task("demo_upper_local", session.hashes, include=tmp_path / "tasks")
    assert not task.test_split  # a task of ours, not a public benchmark's test set
    folder = DEMO / "models" / "upper"
    [result] = evaluate_model(folder, "sha256:model", [task], cache)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    direct = run_task(
        AutoModelForCausalLM.from_pretrained(folder),
        AutoTokenizer.from_pretrained(folder),
        load_task(data, session.hashes),
        "cpu",
    )
    assert result.value == direct.value and result.n == direct.n == 16
    assert 0 < result.value < 1

    import lm_eval

    monkeypatch.setattr(lm_eval, "simple_evaluate", lambda *a, **k: pytest.fail("the harness ran again"))
    assert evaluate_model(folder, "sha256:model", [task], cache) == [result]
    other = load_harness_task("demo_upper_local", session.hashes, include=tmp_path / "tasks", limit=8)
    assert other.sha256 != task.sha256  # the limit is part of the evaluation key
    data.write_text(data.read_text().replace("IVL", "XXX"))
    edited = load_harness_task("demo_upper_local", session.hashes, include=tmp_path / "tasks")
    assert edited.sha256 != task.sha256  # and so is the data


def _yaml(name: str, data: str, extra: str = "") -> str:
    body = YAML.format(data="@").replace("task: demo_upper_local", f"task: {name}{extra}")
    return body.replace("dataset_path: json\ndataset_kwargs:\n  data_files:\n    test: @\n", data)


def test_local_data_is_hashed_folders_and_globs_and_refusals_come_at_load(tmp_path, monkeypatch):
    """Edited data is a new evaluation key whether the YAML names a folder (`dataset_path`)
    or a glob; a tag, a group without a score and a metric the task lacks are refused when
    the task is loaded, before any model runs."""
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    rows = (DEMO / "tasks" / "upper.jsonl").read_text().splitlines()
    (tmp_path / "folder").mkdir()
    (tmp_path / "folder" / "test.jsonl").write_text("\n".join(rows[:8]) + "\n")
    for i in (1, 2):
        (tmp_path / f"up{i}.jsonl").write_text("\n".join(rows[8 * i : 8 * i + 8]) + "\n")
    tasks = tmp_path / "tasks"
    tasks.mkdir()
    (tasks / "folder.yaml").write_text(
        _yaml("by_folder", f"dataset_path: {tmp_path / 'folder'}\n", "\ntag: [demo_tag]")
    )
    (tasks / "glob.yaml").write_text(
        _yaml("by_glob", f"dataset_path: json\ndataset_kwargs: {{ data_files: {{ test: {tmp_path}/up*.jsonl }} }}\n")
    )
    (tasks / "group.yaml").write_text("group: no_score\ntask: [by_glob]\n")
    session = Session()

    def key(name):
        return load_harness_task(name, session.hashes, include=tasks).sha256

    folder, globbed = key("by_folder"), key("by_glob")  # the glob was a FileNotFoundError
    (tmp_path / "folder" / "test.jsonl").write_text("\n".join(rows[:7]) + "\n")
    (tmp_path / "up2.jsonl").write_text("\n".join(rows[16:23]) + "\n")
    assert key("by_folder") != folder and key("by_glob") != globbed
    with pytest.raises(RecipeError, match="is an lm-eval tag"):  # was a KeyError after the whole run
        key("demo_tag")
    with pytest.raises(RecipeError, match="no aggregate score"):
        key("no_score")
    with pytest.raises(RecipeError, match="reports no result 'exact_match'") as e:
        load_harness_task("by_glob", session.hashes, include=tasks, metric="exact_match")
    assert "exact_match,none" in str(e.value.hint)
