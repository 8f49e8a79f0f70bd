"""Every relative link in the docs reaches its file, and every #anchor a heading there:
the pages link into each other by section (performance.md#first-build), and code
comments cite them the same way."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted([*ROOT.glob("*.md"), *(ROOT / "docs").rglob("*.md")])
LINK = re.compile(r"\]\(([^)\s#]*)(?:#([^)\s]+))?\)")
CITED = re.compile(r"(?<![\w/])docs/([\w/-]+\.md)(?:#([\w-]+))?")


def anchors(page: Path) -> set[str]:
    """The anchors GitHub gives the page's headings: lower case, punctuation but hyphens
    dropped, spaces made hyphens, a repeated one suffixed -1, -2, ..."""
    seen: dict[str, int] = {}
    out = set()
    fenced = False
    for line in page.read_text().splitlines():
        if line.startswith("```"):
            fenced = not fenced
        heading = re.match(r"#{1,6} (.*)", line)
        if fenced or not heading:
            continue
        slug = re.sub(r"[^\w\- ]", "", heading.group(1).strip().lower()).replace(" ", "-")
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def test_anchors_are_githubs(tmp_path: Path) -> None:
    page = tmp_path / "p.md"
    page.write_text("# Performance\n## Memory: `--max-memory`\n```\n# not a heading\n```\n## Round 1\n## Round 1\n")
    assert anchors(page) == {"performance", "memory---max-memory", "round-1", "round-1-1"}


@pytest.mark.parametrize("page", PAGES, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_reach_their_sections(page: Path) -> None:
    broken = []
    for target, anchor in LINK.findall(page.read_text()):
        if target.startswith(("http:", "https:", "mailto:")):
            continue
        linked = (page.parent / target) if target else page
        if not linked.exists():
            broken.append(f"{target}: no such file")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target}#{anchor}: no such heading")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_code_cites_pages_that_exist() -> None:
    broken = []
    for source in sorted([*(ROOT / "mergepkg").rglob("*.py"), *(ROOT / "bench").glob("*.py")]):
        for name, anchor in CITED.findall(source.read_text()):
            page = ROOT / "docs" / name
            if not page.exists() or (anchor and anchor not in anchors(page)):
                broken.append(f"{source.relative_to(ROOT)}: docs/{name}{'#' + anchor if anchor else ''}")
    assert not broken, "; ".join(broken)


# -- every option of every command on its page ------------------------------------------
COMMAND_PAGES = {  # command -> its page, under docs/commands/ unless a path is given
    "build": "build.md",
    "validate": "validate.md",
    "plan": "plan.md",
    "graph": "plan.md",
    "lock": "lock.md",
    "verify": "lock.md",
    "eval": "eval.md",
    "tune": "tune.md",
    "import": "import.md",
    "methods": "methods.md",
    "search": "registry.md",
    "info": "registry.md",
    "install": "registry.md",
    "publish": "registry.md",
    "yank": "registry.md",
    "push": "push.md",
    "export": "export.md",
    "cache": "cache.md",
    "registry": "registry.md",
    "remote": "remote.md",
}


def options_of(words: list[str], command) -> list[tuple[str, str]]:
    """(`mergepkg WORDS`, option) for every option of the command and its subcommands."""
    found = [
        (" ".join(words), opt)
        for p in command.params
        for opt in (*p.opts, *p.secondary_opts)
        if p.param_type_name == "option" and opt != "--help"
    ]
    for name, sub in sorted(getattr(command, "commands", {}).items()):
        found += options_of([*words, name], sub)
    return found


def test_every_command_has_a_page():
    from mergepkg.cli.app import COMMANDS

    assert sorted(COMMAND_PAGES) == sorted(COMMANDS)


@pytest.mark.parametrize("name", sorted(COMMAND_PAGES))
def test_every_option_is_on_its_commands_page(name):
    """`--help` and docs/commands/ drifted apart (build's -o, -q and --llama-cpp, tune's
    -n, registry serve's limits were on no page)."""
    from mergepkg.cli.app import load_command

    page = (ROOT / "docs" / "commands" / COMMAND_PAGES[name]).resolve()
    text = page.read_text()
    missing = [
        f"{words} {opt}"
        for words, opt in options_of([name], load_command(name))
        if not re.search(rf"(?<![\w-]){re.escape(opt)}(?![\w-])", text)
    ]
    assert not missing, f"{page.relative_to(ROOT)} does not name: " + ", ".join(missing)


def test_the_architecture_page_names_every_module():
    """docs/architecture.md is the map a newcomer reads: a module missing from it is one
    they cannot find. Command modules (`cli/`, one per command group) and merge methods
    (`methods/`, one per method) are named by those rules, not one by one."""
    from mergepkg.methods import METHODS

    page = (ROOT / "docs" / "architecture.md").read_text(encoding="utf-8")
    missing = []
    for path in sorted((ROOT / "mergepkg").rglob("*.py")):
        rel = path.relative_to(ROOT / "mergepkg")
        if path.name in ("__init__.py", "__main__.py") or (rel.parts[0] == "cli" and len(rel.parts) == 2):
            continue
        if rel.parts[0] == "methods" and len(rel.parts) == 2 and path.stem in METHODS:
            continue
        if str(rel) not in page and f"`{path.name}`" not in page:
            missing.append(str(rel))
    assert not missing, f"docs/architecture.md does not name {missing}"
