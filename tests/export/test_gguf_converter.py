"""The converter's identity, export keys and the errors of export/gguf.py, on a llama.cpp
tree laid out by hand (the real converter runs in test_gguf_demo.py)."""

from __future__ import annotations

import importlib.metadata
import json
from pathlib import Path

import pytest

from mergepkg.errors import ExportError
from mergepkg.export import gguf
from mergepkg.export.gguf import check_model, export_key, failure, find_converter
from mergepkg.recipe.model import Export

STEP_KEY = "a" * 64
SCRIPT = gguf.SCRIPT


def tree(root: Path) -> Path:
    """The files of a llama.cpp tree that mergepkg reads."""
    (root / "conversion").mkdir(parents=True)
    (root / "gguf-py" / "gguf").mkdir(parents=True)
    (root / "convert_hf_to_gguf.py").write_text("print('convert')\n")
    (root / "conversion" / "__init__.py").write_text(
        'TEXT_MODEL_MAP: dict[str, str] = {\n    "LlamaForCausalLM": "llama",\n    "Qwen2ForCausalLM": "qwen",\n}\n'
    )
    (root / "gguf-py" / "gguf" / "__init__.py").write_text("")
    (root / "gguf-py" / "pyproject.toml").write_text('[project]\nname = "gguf"\nversion = "0.19.0"\n')
    return root


def test_the_identity_is_the_version_and_a_digest_of_the_code(tmp_path):
    c = find_converter(tree(tmp_path / "llama.cpp"))
    assert c.version == "gguf-py 0.19.0" and c.digest.startswith("sha256:")
    assert c.identity == f"gguf-py 0.19.0 {c.digest}"
    assert find_converter(tmp_path / "llama.cpp").digest == c.digest  # the same code: the same identity
    (tmp_path / "llama.cpp" / "conversion" / "llama.py").write_text("# a new model class\n")
    assert find_converter(tmp_path / "llama.cpp").digest != c.digest  # changed code: a new identity


def test_a_git_checkout_names_its_commit(tmp_path):
    root = tree(tmp_path / "llama.cpp")
    (root / ".git" / "refs" / "heads").mkdir(parents=True)
    (root / ".git" / "HEAD").write_text("ref: refs/heads/master\n")
    (root / ".git" / "refs" / "heads" / "master").write_text("0123456789abcdef" * 2 + "01234567\n")
    assert find_converter(root).version == "gguf-py 0.19.0, commit 0123456789ab"


def test_no_converter_is_an_error_that_says_how_to_get_one(tmp_path):
    with pytest.raises(ExportError, match="none is set") as e:
        find_converter(None)
    assert "MERGEPKG_LLAMA_CPP" in (e.value.hint or "") and "llama-cpp-python" in (e.value.hint or "")
    with pytest.raises(ExportError, match=r"not a llama\.cpp source tree"):
        find_converter(tmp_path)


def test_the_key_follows_the_step_the_type_and_the_converter(tmp_path):
    c = find_converter(tree(tmp_path / "a"))
    base = export_key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, c)
    assert export_key(Export("other-name", "t", "gguf", "q8_0"), STEP_KEY, c) == base  # names are not in it
    assert export_key(Export("e", "s", "gguf", "bf16"), STEP_KEY, c) != base
    assert export_key(Export("e", "s", "gguf", "q8_0"), "b" * 64, c) != base
    (tmp_path / "a" / SCRIPT).write_text("print('a newer converter')\n")
    assert export_key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, find_converter(tmp_path / "a")) != base


def test_a_quantized_type_needs_llama_cpp_python(tmp_path, monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf.metadata, "version", missing)
    c = find_converter(tree(tmp_path / "a"))
    export_key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, c)  # the converter's own type: no quantizer
    with pytest.raises(ExportError, match="llama-cpp-python is not installed") as e:
        export_key(Export("e", "s", "gguf", "q4_k_m"), STEP_KEY, c)
    assert "mergepkg[llama]" in (e.value.hint or "")


def test_an_architecture_the_converter_lacks_is_refused_before_converting(tmp_path):
    c = find_converter(tree(tmp_path / "a"))
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    check_model(model, c)
    (model / "config.json").write_text(json.dumps({"architectures": ["MadeUpForCausalLM"]}))
    with pytest.raises(ExportError, match="no support for architecture MadeUpForCausalLM") as e:
        check_model(model, c)
    assert "2 architectures" in (e.value.hint or "") and e.value.file == str(model / "config.json")


@pytest.mark.parametrize(
    ("printed", "message"),
    [
        (
            "WARNING:hf-to-gguf:** chkhsh: 1234\nNotImplementedError: BPE pre-tokenizer was not recognized - update",
            "does not know this model's tokenizer",
        ),
        ("ERROR:hf-to-gguf:Model GPTFooForCausalLM is not supported", "no support for architecture GPTFooForCausalLM"),
        ("INFO:x\nValueError: Can not map tensor 'lm_head.bias'\n", "failed: ValueError: Can not map tensor"),
        ("", "failed: (it printed nothing)"),
    ],
)
def test_what_the_converter_printed_becomes_a_one_line_error(printed, message):
    assert message in failure("llama.cpp's converter", printed).message
