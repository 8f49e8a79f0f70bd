"""The converter's identity, export keys and the errors of export/gguf.py, on a llama.cpp
tree laid out by hand (the real converter runs in test_gguf_demo.py)."""

from __future__ import annotations

import errno
import importlib.metadata
import json
from pathlib import Path

import pytest
from llama_trees import ECHO, llama_tree

from mergepkg.errors import DiskError, ExportError
from mergepkg.export import gguf
from mergepkg.export.gguf import (
    check_model,
    convert,
    export_entry,
    export_key,
    failure,
    find_converter,
    model_metadata,
)
from mergepkg.recipe.model import Export

STEP_KEY = "a" * 64
SCRIPT = gguf.SCRIPT


def tree(root: Path) -> Path:
    return llama_tree(root)


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


META = model_metadata("merged", [], ["merge", "mergepkg"])


def key(export: Export, step_key: str, converter, metadata=META) -> str:
    return export_key(export_entry(export, step_key, converter.digest, metadata))


def test_the_key_follows_the_step_the_type_the_converter_and_the_metadata(tmp_path):
    c = find_converter(tree(tmp_path / "a"))
    base = key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, c)
    assert key(Export("other-name", "t", "gguf", "q8_0"), STEP_KEY, c) == base  # names are not in it
    assert key(Export("e", "s", "gguf", "bf16"), STEP_KEY, c) != base
    assert key(Export("e", "s", "gguf", "q8_0"), "b" * 64, c) != base
    # what the converter is told about the model is in the file: general.name, tags, base models
    assert key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, c, model_metadata("other", [], ["merge"])) != base
    assert key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, c, model_metadata("merged", ["org/m"], ["merge"])) != base
    (tmp_path / "a" / SCRIPT).write_text("print('a newer converter')\n")
    assert key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, find_converter(tmp_path / "a")) != base


def test_the_entry_is_what_the_key_hashes_so_a_record_of_it_checks(tmp_path):
    """The store manifest's entry (builder/exports.py) hashes to the key, as a remote
    record requires of every entry (remote/record.py)."""
    from mergepkg.canonical import canonical_json, sha256_hex

    c = find_converter(tree(tmp_path / "a"))
    entry = export_entry(Export("e", "s", "gguf", "q8_0"), STEP_KEY, c.digest, META)
    assert sha256_hex(canonical_json(entry)) == export_key(entry)
    assert entry["export"] == "gguf" and entry["version"] == gguf.KEY_VERSION and entry["metadata"] == META


def test_a_quantized_type_needs_llama_cpp_python(tmp_path, monkeypatch):
    def missing(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(gguf.package_metadata, "version", missing)
    c = find_converter(tree(tmp_path / "a"))
    key(Export("e", "s", "gguf", "q8_0"), STEP_KEY, c)  # the converter's own type: no quantizer
    with pytest.raises(ExportError, match="llama-cpp-python is not installed") as e:
        key(Export("e", "s", "gguf", "q4_k_m"), STEP_KEY, c)
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


@pytest.mark.parametrize(
    "printed",
    [
        "INFO:hf-to-gguf:gguf: writing tensors\nOSError: 12288 requested and 6040 written\n",  # numpy's tofile
        "OSError: [Errno 28] No space left on device\n",
    ],
)
def test_a_full_disk_is_said_as_a_full_disk_not_as_the_converter_s_fault(printed):
    """It was `llama.cpp's converter failed: OSError: 12288 requested and 6040 written`,
    with a hint to look at --debug, which did not show what it printed."""
    e = failure("llama.cpp's converter", printed)
    assert isinstance(e, DiskError) and e.errno == errno.ENOSPC
    assert e.message == "No space left on device while llama.cpp's converter wrote the GGUF file"
    assert "free some space" in (e.hint or "")


@pytest.mark.parametrize(
    ("printed", "reason"),
    [
        (
            "llama_model_loader: loaded meta data with 30 key-value pairs\n"
            "llama_model_quantize: failed to quantize: unknown model architecture: 'madeup'\n"
            "llama_model_quantize returned 1\n",
            "unknown model architecture: 'madeup'",
        ),
        (
            "gguf_init_from_file: failed to open GGUF file 'x.gguf' (No such file or directory)\n"
            "llama_model_quantize: failed to quantize: llama_model_loader: failed to load model from x.gguf\n"
            "llama_model_quantize returned 1\n",
            "llama_model_loader: failed to load model from x.gguf",
        ),
    ],
)
def test_the_quantizer_s_failure_says_llama_cpp_s_reason(printed, reason):
    """llama.cpp's reason, not the exit code; the hint says its llama.cpp may be older."""
    e = failure("llama.cpp's quantizer", printed)
    assert e.message == f"llama.cpp's quantizer failed: {reason}"
    assert "llama-cpp-python" in (e.hint or "") and "older than the converter" in (e.hint or "")


def test_the_quantizer_prints_llama_cpp_s_reason_last():
    """quantize.py's own line says no "error": the reason stays llama.cpp's (also for the
    fallback rule, which keeps the last error line)."""
    source = (Path(gguf.__file__).parent / "quantize.py").read_text()
    assert 'print(f"llama_model_quantize returned {failed}"' in source
    assert "ERROR" not in source.split("def main", 1)[1]


def stub_model(folder: Path) -> Path:
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architectures": ["LlamaForCausalLM"]}))
    (folder / "model.safetensors").write_bytes(b"\0" * 8)
    (folder / "mergepkg-manifest.json").write_text("{}")
    return folder


def test_the_converter_sees_the_model_as_its_placed_output_folder(tmp_path):
    """Named as the output folder is placed, with the model card's front matter: the
    converter takes general.name, tags and base models from there, not a store key."""
    converter = find_converter(llama_tree(tmp_path / "llama.cpp", ECHO))
    model = stub_model(tmp_path / ("f" * 64))  # a store folder's name: a key
    (tmp_path / "work").mkdir()
    out = tmp_path / "work" / "model.gguf"
    meta = model_metadata("my-merge", ["org/base"], ["merge", "mergepkg", "mine"])
    convert(model, out, "q8_0", converter, meta)
    seen = json.loads(out.read_bytes()[4:])
    assert seen["name"] == "my-merge"
    front = seen["card"].split("---\n")[1]
    assert json.loads(front) == {"base_model": ["org/base"], "tags": ["merge", "mergepkg", "mine"]}
    assert [p.name for p in (tmp_path / "work").iterdir()] == ["model.gguf"]  # the staged folder is gone


@pytest.mark.parametrize(
    ("script", "message"),
    [
        ("print('done')\n", "llama.cpp's converter exited without error but wrote no file"),
        (
            "import sys\nopen(sys.argv[sys.argv.index('--outfile') + 1], 'w').write('<html>')\n",
            "llama.cpp's converter wrote a file that is not GGUF",
        ),
    ],
)
def test_a_converter_that_succeeds_without_a_gguf_file_is_an_error(tmp_path, script, message):
    converter = find_converter(llama_tree(tmp_path / "llama.cpp", script))
    model = stub_model(tmp_path / "model")
    with pytest.raises(ExportError, match=message):
        convert(model, tmp_path / "model.gguf", "f16", converter, META)


def test_the_setup_hint_names_no_option():
    """Commands with no --llama-cpp need the converter too (lock, plan of an export never
    locked): the hint names what each of them has, the environment variable."""
    assert "--llama-cpp" not in gguf.SETUP_HINT and "MERGEPKG_LLAMA_CPP" in gguf.SETUP_HINT


def test_debug_shows_what_a_failed_run_printed(capsys):
    """The hint says to run with --debug to see all it printed: the traceback's note holds it."""
    import sys
    import traceback

    command = [sys.executable, "-c", "print('converting the embeddings'); raise SystemExit('ValueError: no')"]
    with pytest.raises(ExportError) as e:
        gguf._run(command, "llama.cpp's converter")
    assert e.value.message == "llama.cpp's converter failed: ValueError: no"
    assert "converting the embeddings" in "".join(traceback.format_exception(e.value))
