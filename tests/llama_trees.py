"""llama.cpp source trees laid out by hand: the files mergepkg reads to find and identify
the converter (export/gguf.py), and a `convert_hf_to_gguf.py` of the test's choosing, so
keys, locks and the converter's runs are tested in milliseconds (the real converter
runs in tests/export/test_gguf_demo.py)."""

from __future__ import annotations

from pathlib import Path

# writes to --outfile what it was given: the model folder's name and its README.md
ECHO = """import json, sys
from pathlib import Path
model = Path(sys.argv[1])
out = Path(sys.argv[sys.argv.index("--outfile") + 1])
out.write_bytes(b"GGUF" + json.dumps({"name": model.name, "card": (model / "README.md").read_text()}).encode())
"""


def llama_tree(root: Path, script: str = "print('convert')\n") -> Path:
    """The files of a llama.cpp tree that mergepkg reads; `script` is its converter."""
    (root / "conversion").mkdir(parents=True)
    (root / "gguf-py" / "gguf").mkdir(parents=True)
    (root / "convert_hf_to_gguf.py").write_text(script)
    (root / "conversion" / "__init__.py").write_text(
        'TEXT_MODEL_MAP: dict[str, str] = {\n    "LlamaForCausalLM": "llama",\n    "Qwen2ForCausalLM": "qwen",\n}\n'
    )
    (root / "gguf-py" / "gguf" / "__init__.py").write_text("")
    (root / "gguf-py" / "pyproject.toml").write_text('[project]\nname = "gguf"\nversion = "0.19.0"\n')
    return root


def gguf_general(path: Path, tree: Path) -> dict:
    """The `general.*` fields of a GGUF file, read by the tree's own gguf-py (in a
    subprocess: the test process keeps its imports)."""
    import json
    import subprocess
    import sys

    code = (
        "import json, sys\n"
        f"sys.path.insert(0, {str(tree / 'gguf-py')!r})\n"
        "from gguf import GGUFReader\n"
        f"r = GGUFReader({str(path)!r})\n"
        "print(json.dumps({k: v.contents() for k, v in r.fields.items() if k.startswith('general.')}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(done.stdout)
