"""GGUF export for real: recipes/demo-gguf.toml through llama.cpp's converter and
quantizer, the files loaded in llama.cpp (llama-cpp-python) and their greedy answers to
the demo's 400 held-out prompts compared with transformers' on the merged model."""

from __future__ import annotations

import hashlib
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from helpers import cli, llama_cpp_tree
from llama_greedy import (
    demo_prompts,
    llama_answers,
    logit_deviation,
    score,
    transformers_answers,
)
from transformers import AutoTokenizer

from mergepkg.builder.build import build
from mergepkg.errors import ExportError
from mergepkg.export.quantize import FTYPES
from mergepkg.lockfile import read_lock
from mergepkg.recipe.exports import QUANTIZER_TYPES
from mergepkg.recipe.parse import load_recipe
from mergepkg.settings import Settings
from mergepkg.store.session import Session

pytestmark = pytest.mark.slow

RECIPES = Path(__file__).parents[2] / "recipes"


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """A copy of recipes/demo-gguf.toml, its lock and the demo models (builds write the lock)."""
    root = tmp_path_factory.mktemp("demo")
    shutil.copytree(RECIPES / "demo" / "models", root / "demo" / "models")
    for name in ("demo-gguf.toml", "demo-gguf.lock"):
        shutil.copy(RECIPES / name, root / name)
    return root / "demo-gguf.toml"


@pytest.fixture(scope="module")
def session(tmp_path_factory) -> Session:
    return Session(Settings(home=tmp_path_factory.mktemp("home"), llama_cpp=llama_cpp_tree()))


@pytest.fixture(scope="module")
def built(demo, session, tmp_path_factory):
    """The demo's exports built once, --locked: the shipped lock must pin their bytes."""
    out = tmp_path_factory.mktemp("out") / "demo-gguf"
    return build(load_recipe(demo), session, out=out, mode="locked"), out


def test_the_shipped_lock_pins_every_export_s_bytes(built, demo):
    report, out = built
    assert sorted(report.exported) == ["ties-bf16", "ties-f32", "ties-q4", "ties-q8"]
    locked = read_lock(demo.with_suffix(".lock"))
    assert locked is not None
    card = (out / "README.md").read_text()  # the model card lists the files, with their sha256
    for name, file in report.placed_exports.items():
        assert file == out / f"{name}.gguf"
        assert "sha256:" + hashlib.sha256(file.read_bytes()).hexdigest() == locked.exports[name].digest
        assert locked.exports[name].key == report.exports[name].key
        assert f"| `{name}.gguf` | {locked.exports[name].type} | `{locked.exports[name].digest[7:]}` |" in card


@pytest.fixture(scope="module")
def answers(built):
    """transformers' greedy answers on the merged model, in float32."""
    _, out = built
    prompts = [p for p, _ in demo_prompts()]
    return transformers_answers(out, prompts)


@pytest.mark.parametrize(("name", "most", "deviation"), [("ties-f32", 2, 0.03), ("ties-bf16", 8, 0.3)])
def test_float_exports_compute_what_transformers_computes(built, answers, name, most, deviation):
    """Same prompts, same tokens, logits within `deviation` of transformers' (float32, on
    the merged model) at every position, so the greedy answers part only at near ties:
    measured 1 (f32) and 3 (bf16) of 400, logits within 0.018 and 0.17 (a bf16 file's
    weights are rounded, and llama.cpp rounds activations to bf16 in their products)."""
    _, out = built
    pairs = demo_prompts()
    hf_ids, hf = answers
    ids, got = llama_answers(out / f"{name}.gguf", [p for p, _ in pairs])
    assert ids == hf_ids  # llama.cpp tokenizes the prompts as transformers does (the SentencePiece model)
    assert sum(a != b for a, b in zip(got, hf)) <= most
    assert logit_deviation(out, out / f"{name}.gguf", [p + a for p, a in pairs[::4]]) <= deviation


@pytest.mark.parametrize(("name", "margin"), [("ties-q8", 0.02), ("ties-q4", 0.05)])
def test_quantized_exports_score_within_a_margin_of_transformers(built, answers, name, margin):
    _, out = built
    pairs = demo_prompts()
    decode = AutoTokenizer.from_pretrained(out).decode
    _, got = llama_answers(out / f"{name}.gguf", [p for p, _ in pairs])
    expected = [a for _, a in pairs]
    assert abs(score(got, expected, decode) - score(answers[1], expected, decode)) <= margin


def test_an_unchanged_export_is_reused_and_a_changed_one_converted_alone(built, demo, session, tmp_path):
    again = build(load_recipe(demo), session, out=tmp_path / "again")
    assert again.exported == [] and sorted(again.exports) == sorted(built[0].exports)
    edited = demo.with_name("edited.toml")
    edited.write_text(demo.read_text().replace('type = "bf16"', 'type = "f16"'))
    report = build(load_recipe(edited), session, out=tmp_path / "edited")
    assert report.exported == ["ties-bf16"] and report.built == []  # the step is stored; one conversion
    assert (tmp_path / "edited" / "ties-bf16.gguf").read_bytes()[:4] == b"GGUF"


def test_export_makes_only_what_it_names_and_records_it_in_the_lock(
    built, demo, session, tmp_path, capsys, monkeypatch
):
    monkeypatch.setenv("MERGEPKG_HOME", str(session.settings.home))
    monkeypatch.setenv("MERGEPKG_LLAMA_CPP", str(llama_cpp_tree()))
    code, out, err = cli(capsys, "export", demo, "ties-q8", "-o", tmp_path / "gguf")
    assert code == 0, err
    assert out.split() == [str(tmp_path / "gguf" / "ties-q8.gguf")]
    assert sorted(p.name for p in (tmp_path / "gguf").iterdir()) == [".mergepkg-output", "ties-q8.gguf"]
    code, _, err = cli(capsys, "export", demo, "ties-q9")
    assert code == 1 and "no export named 'ties-q9'" in err and "ties-q8" in err
    dist = tmp_path / "dist"  # docs/export.md's `-o dist`, into a folder of the user's
    dist.mkdir()
    (dist / "notes.txt").write_text("mine")
    code, out, err = cli(capsys, "export", demo, "ties-q8", "-o", dist)
    assert code == 0, err
    assert sorted(p.name for p in dist.iterdir()) == ["notes.txt", "ties-q8.gguf"]


def test_the_gguf_is_what_the_converter_makes_of_the_placed_output_folder(built, session, tmp_path):
    """Named as the user's own run of the converter on out/demo-gguf names it (general.name,
    tags from the model card), not after a store key: the same bytes. Each stored
    export's manifest entry is what its key hashes."""
    import subprocess
    import sys

    from llama_trees import gguf_general

    from mergepkg.canonical import canonical_json, sha256_hex

    report, out = built
    mine = tmp_path / "mine.gguf"
    script = llama_cpp_tree() / "convert_hf_to_gguf.py"
    subprocess.run(
        [sys.executable, script, out, "--outfile", mine, "--outtype", "f32"], check=True, capture_output=True
    )
    assert mine.read_bytes() == (out / "ties-f32.gguf").read_bytes()
    fields = gguf_general(out / "ties-q4.gguf", llama_cpp_tree())
    assert fields["general.name"] == "Demo Gguf" and "general.finetune" not in fields
    assert fields["general.tags"] == ["merge", "mergepkg"]
    for art in report.exports.values():
        assert sha256_hex(canonical_json(art.manifest["entry"])) == art.key


def test_a_tokenizer_llama_cpp_does_not_know_is_refused_and_nothing_is_written(demo, session, tmp_path):
    root = tmp_path / "r"
    shutil.copytree(demo.parent / "demo", root / "demo")
    for model in (root / "demo" / "models").iterdir():
        (model / "tokenizer.model").unlink()  # tokenizer.json alone: a character-level WordLevel tokenizer
    recipe = root / "demo-gguf.toml"
    recipe.write_text(demo.read_text())
    fresh = Session(replace(session.settings, home=tmp_path / "home"))
    with pytest.raises(ExportError, match="does not know this model's tokenizer") as e:
        build(load_recipe(recipe), fresh, out=tmp_path / "out")
    assert e.value.key is not None and e.value.key.startswith("exports.")
    assert not (tmp_path / "out").exists() and not recipe.with_suffix(".lock").exists()
    stored = [a.manifest.get("entry", {}) for a in fresh.store.all()]
    assert stored and not any("export" in entry for entry in stored)  # the step is stored, no export is
    assert not list((tmp_path / "home" / "tmp").iterdir())


def test_the_quantizer_knows_every_quantized_type():
    assert set(FTYPES) == set(QUANTIZER_TYPES)


def test_plan_shows_each_export_stored_or_to_make(built, demo, session, capsys, monkeypatch):
    monkeypatch.setenv("MERGEPKG_LLAMA_CPP", str(llama_cpp_tree()))
    monkeypatch.setenv("MERGEPKG_HOME", str(session.settings.home))
    code, out, err = cli(capsys, "plan", demo)
    assert code == 0 and "ties-q4" in out and "gguf q4_k_m of ties stored" in out
    assert "exports: 4 stored, 0 to make" in err
    monkeypatch.setenv("MERGEPKG_HOME", str(session.settings.home.parent / "empty-home"))
    code, out, err = cli(capsys, "plan", demo)
    assert code == 0 and "gguf q8_0 of ties to make" in out and "exports: 0 stored, 4 to make" in err
