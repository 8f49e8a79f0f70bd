"""`mergepkg eval`: exact match, perplexity, targets and the cache."""

from __future__ import annotations

import json
import math

import pytest
from helpers import gc_refusals
from hfcache import add_to_cache

from mergepkg.cli.app import main
from mergepkg.errors import RecipeError
from mergepkg.eval.run import evaluate_model
from mergepkg.eval.targets import target_models
from mergepkg.eval.tasks import load_task
from mergepkg.store.evals import EvalCache
from mergepkg.store.session import Session


def reference_accuracy(folder, examples):
    """The documented protocol, one example at a time: batching must not change it."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(folder), AutoModelForCausalLM.from_pretrained(folder)
    hits = 0
    for prompt, answer in examples:
        ids = tok(prompt, return_tensors="pt").input_ids
        budget = 2 * len(tok(answer, add_special_tokens=False).input_ids) + 4
        out = model.generate(ids, do_sample=False, max_new_tokens=budget)
        text = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).split("\n", 1)[0].strip()
        hits += text == answer.strip()
    return hits / len(examples)


@pytest.fixture
def tasks(tmp_path, models):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, model = AutoTokenizer.from_pretrained(models["base"]), AutoModelForCausalLM.from_pretrained(models["base"])
    prompts = ["1+2=", "ab", "9+9=", "zz", "3+4=", "a+b=", "77", "c"]
    rows = []
    for p in prompts:  # answers of several lengths, some of them what the model says
        ids = tok(p, return_tensors="pt").input_ids
        out = model.generate(ids, do_sample=False, max_new_tokens=6)
        rows.append((p, tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()[: 1 + len(p) % 3]))
    good = tmp_path / "good.jsonl"
    good.write_text("".join(json.dumps({"prompt": p, "answer": a}) + "\n" for p, a in rows))
    bad = tmp_path / "bad.jsonl"
    bad.write_text("".join(json.dumps({"prompt": p, "answer": "nope"}) + "\n" for p in prompts))
    text = tmp_path / "text.txt"
    text.write_text("12+3=15. abc cba. " * 5)  # shorter than the 128-token window: one chunk
    return good, bad, text


def test_exact_match_and_perplexity(tasks, models):
    import torch

    from mergepkg.eval.run import examples

    good, bad, text = tasks
    session = Session()
    task_list = [load_task(p, session.hashes) for p in (good, bad, text)]
    model = target_models(str(models["base"]), session)[0]
    results = evaluate_model(model.folder, model.key, task_list, EvalCache(session.settings.home))
    assert [r.metric for r in results] == ["exact_match", "exact_match", "perplexity"]
    assert results[0].value == reference_accuracy(models["base"], examples(task_list[0])) and results[0].n == 8
    assert results[1].value == 0.0
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok, lm = AutoTokenizer.from_pretrained(models["base"]), AutoModelForCausalLM.from_pretrained(models["base"])
    ids = tok(text.read_text(), return_tensors="pt").input_ids
    with torch.no_grad():
        loss = lm(ids, labels=ids).loss.item()
    assert results[2].value == pytest.approx(math.exp(loss), rel=1e-4)


def test_results_are_cached_by_model_key_and_task_hash(tasks, models, monkeypatch):
    good, _, _ = tasks
    session = Session()
    task = load_task(good, session.hashes)
    model = target_models(str(models["base"]), session)[0]
    cache = EvalCache(session.settings.home)
    first = evaluate_model(model.folder, model.key, [task], cache)
    import transformers

    monkeypatch.setattr(transformers.AutoModelForCausalLM, "from_pretrained", lambda *a, **k: 1 / 0)
    assert evaluate_model(model.folder, model.key, [task], cache) == first  # no model loaded
    good.write_text(good.read_text() + json.dumps({"prompt": "x", "answer": "y"}) + "\n")
    with pytest.raises(ZeroDivisionError):  # new task content: not cached
        evaluate_model(model.folder, model.key, [load_task(good, session.hashes)], cache)


def test_recipe_targets_build_steps_and_cli_json(tasks, write_recipe, capsys):
    good, _, text = tasks
    path = write_recipe(
        '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'
    )
    code = main(["eval", f"{path}:soup", f"{path}:base", "-t", str(good), "-t", str(text), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    rows = json.loads(captured.out)
    assert {(r["model"], r["task"]) for r in rows} == {
        ("recipe.toml:soup", "good"),
        ("recipe.toml:soup", "text"),
        ("recipe.toml:base", "good"),
        ("recipe.toml:base", "text"),
    }
    soup = next(r for r in rows if r["model"] == "recipe.toml:soup")
    assert len(soup["key"]) == 64  # a step: its store key
    assert "evaluation" in captured.err and "recipe.toml:soup" in captured.err


def test_whole_recipe_evaluates_sources_and_steps(tasks, write_recipe, capsys):
    good, _, _ = tasks
    path = write_recipe(
        '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'
    )
    assert main(["eval", str(path), "-t", str(good), "--json"]) == 0
    labels = [r["model"] for r in json.loads(capsys.readouterr().out)]
    assert labels == ["recipe.toml:ft1", "recipe.toml:ft2", "recipe.toml:soup"]


def test_hub_target_offline(tasks, models, tmp_path, monkeypatch):
    good, _, _ = tasks
    add_to_cache(tmp_path / "hf", "tiny/base", models["base"])
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    session = Session()
    (model,) = target_models("tiny/base@main", session)
    assert model.folder.parent.name == "snapshots"
    local = target_models(str(models["base"]), session)[0]
    assert model.key != local.key  # the hub pin includes the commit
    task = [load_task(good, session.hashes)]
    cache = EvalCache(session.settings.home)
    assert (
        evaluate_model(model.folder, model.key, task, cache)[0].value
        == evaluate_model(local.folder, local.key, task, cache)[0].value
    )


def test_a_result_of_the_older_exact_match_protocol_is_replaced_not_shown_beside(tasks, models):
    """Model cards list every cached result of a model: one cached under exact match's first
    protocol (its key the task's sha256) is dropped once the current protocol scores it."""
    from mergepkg.store.evals import Result

    good, _, _ = tasks
    session = Session()
    task = load_task(good, session.hashes)
    model = target_models(str(models["base"]), session)[0]
    cache = EvalCache(session.settings.home)
    cache.put(model.key, task.sha256, Result(task.name, "exact_match", 0.5, 8))  # as the older protocol left it
    assert [r["value"] for r in cache.rows(model.key)] == [0.5]
    (now,) = evaluate_model(model.folder, model.key, [task], cache)
    assert cache.rows(model.key) == [{"task": task.name, "metric": "exact_match", "value": now.value, "n": 8}]


def test_bad_task_lines_and_targets_are_located(tmp_path, models, write_recipe):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "a", "answer": "b"}\n{"prompt": "a"}\n')
    session = Session()
    with pytest.raises(RecipeError) as info:  # when the task is loaded: before anything is built
        load_task(bad, session.hashes)
    assert info.value.line == 2
    bad.write_bytes(b'{"prompt": "\xff"}\n')
    with pytest.raises(RecipeError, match="not UTF-8"):
        load_task(bad, session.hashes)
    with pytest.raises(RecipeError, match="did you mean 'soup'"):
        target_models(str(write_recipe('[steps.soup]\nmethod = "passthrough"\ninputs = ["ft1"]\n')) + ":sopu", session)


def test_bad_targets_and_devices_are_one_line_errors(tasks, tmp_path, models, capsys):
    good = str(tasks[0])
    no_tokenizer = tmp_path / "weights-only"
    no_tokenizer.mkdir()
    for name in ("config.json", "model.safetensors"):
        (no_tokenizer / name).write_bytes((models["base"] / name).read_bytes())
    for args, says in (
        (["./no-such-folder"], "no such folder"),
        ([str(no_tokenizer)], "cannot load the model's tokenizer"),
        ([str(models["base"]), "--device", "tpu"], "unknown device 'tpu'"),
    ):
        code = main(["eval", *args, "-t", good])
        err = capsys.readouterr().err
        assert code == 1 and "Traceback" not in err and says in err, err


def test_model_card_shows_eval_results(tasks, write_recipe, tmp_path, capsys):
    good, _, _ = tasks
    path = write_recipe(
        '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'
    )
    assert main(["eval", f"{path}:soup", "-t", str(good)]) == 0
    assert main(["build", str(path), "--out", str(tmp_path / "out"), "-q"]) == 0
    card = (tmp_path / "out" / "README.md").read_text()
    assert "## Evaluation" in card and "| good | exact_match |" in card


def _copy(src, dst):
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def test_task_labels_tell_files_of_one_stem_apart(tmp_path):
    from mergepkg.eval.run import task_labels
    from mergepkg.eval.tasks import Task

    def task(rel):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        return Task((tmp_path / rel).stem, tmp_path / rel, "0" * 64)

    a, b, c, txt, obj = (task(p) for p in ("a/t.jsonl", "b/t.jsonl", "x/a/t.jsonl", "b/t.txt", "objective.jsonl"))
    assert task_labels([a, txt]) == ["t.jsonl", "t.txt"]
    assert task_labels([a, b]) == ["a/t", "b/t"]
    assert task_labels([a, b, c]) == [f"{tmp_path.name}/a/t", "b/t", "x/a/t"]
    assert task_labels([a, a]) == ["t", "t #2"]  # the same file twice: numbered, still two columns
    assert task_labels([obj, a], reserved=frozenset({"objective"})) == ["objective.jsonl", "t"]


def test_tasks_sharing_a_stem_and_renamed_copies_keep_their_results(tasks, models, tmp_path, capsys):
    """a/t.jsonl and b/t.jsonl are two tasks (two results, two columns); a renamed copy of a
    task file is a cache hit reported under its new name."""
    good, bad, _ = tasks
    for folder, src in (("a", good), ("b", bad)):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "t.jsonl").write_bytes(src.read_bytes())
    base = str(models["base"])
    assert main(["eval", base, "-t", str(tmp_path / "a/t.jsonl"), "-t", str(tmp_path / "b/t.jsonl"), "--json"]) == 0
    captured = capsys.readouterr()
    rows = {r["task"]: r["value"] for r in json.loads(captured.out)}
    assert main(["eval", base, "-t", str(good), "--json"]) == 0
    alone = json.loads(capsys.readouterr().out)[0]["value"]
    assert rows == {"a/t": alone, "b/t": 0.0} and "a/t" in captured.err and "b/t" in captured.err
    copy = tmp_path / "renamed.jsonl"
    copy.write_bytes(good.read_bytes())
    assert main(["eval", base, "-t", str(copy), "--json"]) == 0  # was a KeyError traceback
    [row] = json.loads(capsys.readouterr().out)
    assert row["task"] == "renamed" and row["value"] == alone


def test_a_perplexity_past_floats_range_is_inf_and_json_null(tasks, models, tmp_path, capsys):
    from safetensors.torch import load_file, save_file

    from mergepkg.eval.run import perplexity

    _, _, text = tasks
    loud = _copy(models["base"], tmp_path / "loud")
    weights = load_file(loud / "model.safetensors")
    weights["lm_head.weight"] *= 1e5  # a mean loss far past 709
    save_file(weights, loud / "model.safetensors", metadata={"format": "pt"})
    assert perplexity(1e6, 10) == math.inf
    assert main(["eval", str(loud), "-t", str(text), "--json"]) == 0  # was an OverflowError traceback
    captured = capsys.readouterr()
    assert json.loads(captured.out)[0]["value"] is None  # strict JSON: null, not Infinity
    assert "inf" in captured.err


def test_exact_match_decodes_greedily_whatever_generation_config_says(tasks, models, tmp_path, monkeypatch):
    """A merge copies its sources' generation_config.json (an Instruct model's
    repetition_penalty): exact match must still decode purely greedily, and results of the
    old protocol must not be reused."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from mergepkg.eval.run import run_task

    good, _, text = tasks
    penalised = _copy(models["base"], tmp_path / "penalised")
    settings = {"bos_token_id": 1, "eos_token_id": 2, "repetition_penalty": 5.0, "no_repeat_ngram_size": 1}
    (penalised / "generation_config.json").write_text(json.dumps(settings))
    tok = AutoTokenizer.from_pretrained(penalised)
    plain, model = (AutoModelForCausalLM.from_pretrained(f) for f in (models["base"], penalised))
    ids = tok("1+2=", return_tensors="pt").input_ids
    with torch.no_grad():  # the test means something: the model's own config changes the output
        assert not torch.equal(
            plain.generate(ids, do_sample=False, max_new_tokens=12), model.generate(ids, max_new_tokens=12)
        )
    seen = []
    real = model.generate
    monkeypatch.setattr(model, "generate", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    session = Session()
    task = load_task(good, session.hashes)
    run_task(model, tok, task, "cpu")
    tok.padding_side = "left"
    enc = tok([p for p, _ in examples_of(task)], return_tensors="pt", padding=True)
    with torch.no_grad():
        expected = plain.generate(**enc, do_sample=False, max_new_tokens=seen[0].shape[1] - enc.input_ids.shape[1])
    assert torch.equal(seen[0], expected)
    assert model.generation_config.repetition_penalty == 5.0  # the model is left as it was
    assert task.key != task.sha256  # exact match's cache key carries its protocol's version
    assert load_task(text, session.hashes).key == load_task(text, session.hashes).sha256  # perplexity's did not change


def examples_of(task):
    from mergepkg.eval.tasks import examples

    return examples(task)


def test_eval_of_a_step_holds_the_store_until_it_is_evaluated(tasks, write_recipe, monkeypatch):
    """`cache gc` must not remove the step `eval recipe.toml:step` built before it is read."""
    from mergepkg.cli import eval as cli_eval

    good, _, _ = tasks
    path = write_recipe(
        '[steps.soup]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 1 }, { model = "ft2", weight = 1 }]\n'
    )
    refused = gc_refusals(monkeypatch, cli_eval, "evaluate_model")
    assert main(["eval", f"{path}:soup", "-t", str(good)]) == 0
    assert refused == ["a build is running in this store"]


@pytest.mark.parametrize(
    ("content", "line", "words"),
    [
        ('{"prompt": "a", "answer": "b"}\n{"prompt": "a", "answer": null}\n', 2, '"answer" is null, not a string'),
        ('{"prompt": 5, "answer": "b"}\n', 1, '"prompt" is 5, not a string'),
        ('{"prompt": "a", "answer": "b"}\n\n["a", "b"]\n', 3, 'expected a JSON object with "prompt"'),
    ],
)
def test_a_prompt_or_answer_that_is_no_string_is_refused_at_its_line(tmp_path, content, line, words):
    """str() made `null` the answer "None" and 5 the prompt "5"."""
    path = tmp_path / "t.jsonl"
    path.write_text(content)
    with pytest.raises(RecipeError) as info:
        load_task(path, Session().hashes)
    assert info.value.line == line and words in info.value.message and "strings" in info.value.hint


@pytest.mark.parametrize(
    ("content", "words"), [(b"", "no text to score"), (b" \n\n", "no text"), (b"caf\xe9", "UTF-8")]
)
def test_a_text_task_with_nothing_to_score_or_not_utf8_is_refused_when_loaded(tmp_path, content, words):
    """An empty text scored a perplexity of 1.0 over no token; latin-1 was a traceback when scored."""
    path = tmp_path / "t.txt"
    path.write_bytes(content)
    with pytest.raises(RecipeError, match=words) as info:
        load_task(path, Session().hashes)
    assert info.value.file == str(path)


class _OneToken:
    """A tokenizer that makes any text one token, and a model that must not be asked."""

    config = type("Config", (), {"max_position_embeddings": 8})()

    def __call__(self, text, return_tensors):
        import torch

        return type("Encoded", (), {"input_ids": torch.tensor([[7]])})()


def test_a_text_of_one_token_is_refused_not_a_perplexity_of_one(tmp_path):
    from mergepkg.eval.run import run_task

    path = tmp_path / "one.txt"
    path.write_text("a")
    task = load_task(path, Session().hashes)
    with pytest.raises(RecipeError, match="no next token to score") as info:
        run_task(_OneToken(), _OneToken(), task, "cpu")
    assert info.value.file == str(path) and "two tokens" in info.value.hint


def test_a_cached_perplexity_of_no_token_is_not_shown(tmp_path, monkeypatch):
    """Earlier versions cached 1.0 over 0 tokens: it is evaluated again (and refused)."""
    from mergepkg.eval import run
    from mergepkg.store.evals import Result

    path = tmp_path / "one.txt"
    path.write_text("a")
    task = load_task(path, Session().hashes)
    cache = EvalCache(tmp_path / "home")
    cache.put("m", task.key, Result("one", "perplexity", 1.0, 0))
    monkeypatch.setattr(run, "_load", lambda folder, device: (_OneToken(), _OneToken()))
    with pytest.raises(RecipeError, match="no next token"):
        evaluate_model(tmp_path, "m", [task], cache)
