"""The registry's web pages (`registry/pages.py`, `site.py`): rendered through the WSGI
app in-process: the index and its search, package and version pages, escaping, 404s,
redirects, ETags, the static site, and the SVG drawing of a recipe's DAG."""

from __future__ import annotations

import json
import re

import pytest
from helpers import cli
from registries import app, new_registry, skills

from mergepkg.errors import RegistryError
from mergepkg.registry import tokens
from mergepkg.registry.folder import RegistryFolder, parse_published
from mergepkg.registry.server import App
from mergepkg.registry.site import write_site

LOCK = """version = 1
recipe = "{h}"

[[step]]
name = "skills"
method = "task_arithmetic"
key = "{k}"
digest = "sha256:{d}"
"""


def publish(folder, text, lock=None):
    data = text.encode()
    return folder.publish(parse_published(data, "up.toml"), data, lock)


@pytest.fixture
def reg(tmp_path):
    root = tmp_path / "reg"
    folder = new_registry(root, "team")
    publish(folder, skills("0.1.0"))
    publish(folder, skills("0.2.0", 0.4))
    folder.yank("skills", "0.2.0")
    publish(folder, app())
    evil = skills("1.0.0", name="evil").replace(
        'description = "Task arithmetic of two tiny fine-tunes"', 'description = "<script>alert(1)</script> & co"'
    )
    publish(folder, evil)
    return root


def get(application, path, query="", headers=None, method="GET"):
    seen = {}

    def start_response(status, hdrs):
        seen["status"], seen["headers"] = int(status.split()[0]), dict(hdrs)

    env = {"REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "HTTP_HOST": "reg.test:8780"}
    env.update(headers or {})
    body = b"".join(application(env, start_response))
    return seen["status"], seen["headers"], body.decode()


def test_index_lists_every_package_with_latest_and_tags(reg):
    status, headers, body = get(App(reg), "/")
    assert status == 200 and headers["Content-Type"].startswith("text/html")
    for name in ("skills", "app", "evil"):
        assert f'href="./packages/{name}/"' in body
    row = re.search(r'<tr data-search="skills.*?</tr>', body).group(0)
    assert ">0.1.0<" in row and "yanked" not in row  # the yanked 0.2.0 is not the latest
    assert 'class="tag" href="./?q=tiny"' in body
    assert "<script" not in body.replace("&lt;script&gt;", "")  # no JavaScript on a served page
    assert "&lt;script&gt;alert(1)&lt;/script&gt; &amp; co" in body


def test_search_is_server_side(reg):
    _, _, body = get(App(reg), "/", "q=TINY+evil")
    assert "packages/evil/" in body and "packages/skills/" not in body and "1 packages" in body
    _, _, body = get(App(reg), "/", "q=%3Cscript%3E")
    assert 'value="&lt;script&gt;"' in body and "<script>" not in body
    _, _, body = get(App(reg), "/", "q=nothing-like-this")
    assert "0 packages" in body and "Nothing matches" in body


def test_package_page(reg):
    _, _, body = get(App(reg), "/packages/skills/")
    assert "<h1>skills <span class=muted>0.1.0</span>" in body
    assert "mergepkg build skills@=0.1.0" in body and "skills = &quot;^0.1&quot;" in body
    assert "registry add team http://reg.test:8780" in body
    assert body.count('class="node source"') == 3 and 'class="node output"' in body  # base, ft1, ft2 -> skills
    assert "0.2.0</a> <span class=yanked>yanked</span>" in body
    assert re.search(r'<li><a href="\.\./\.\./packages/app/">app</a> <code>\^0\.1</code>', body)  # a dependent
    assert 'href="../../recipes/skills/0.1.0.toml"' in body and "[steps.skills]" in body
    assert "tiny/ft1" in body and "No lock was published" in body


def test_version_page_and_dependencies(reg):
    _, _, body = get(App(reg), "/packages/skills/0.2.0/")
    assert "<h1>skills <span class=muted>0.2.0</span> <span class=yanked>yanked</span>" in body
    assert 'the latest is <a href="../../../packages/skills/">0.1.0</a>' in body
    _, _, body = get(App(reg), "/packages/app/")
    assert '<a href="../../packages/skills/">skills</a> <code>^0.1</code>' in body
    assert "skills:skills" in body  # the dependency source, drawn


def test_a_version_page_builds_that_version(reg):
    """A bare version is a caret range: `build skills@0.1.0` would build 0.1.5."""
    publish(RegistryFolder(reg), skills("0.1.5"))
    _, _, body = get(App(reg), "/packages/skills/0.1.0/")
    assert "mergepkg build skills@=0.1.0\n" in body
    assert "mergepkg build skills@0.1.0" not in body


def test_pre_release_pages_name_ranges_that_pick_them(tmp_path):
    """Only a range naming a pre-release picks one: `^1.0` finds nothing in a package
    with only 1.0.0-rc.1. The latest is what `install NAME` picks: a release when one is there."""
    root = tmp_path / "reg"
    folder = new_registry(root, "team")
    publish(folder, skills("1.0.0-rc.1", name="gamma"))
    _, _, body = get(App(root), "/packages/gamma/")
    assert "mergepkg install gamma@^1.0.0-rc.1</pre>" in body and "gamma = &quot;^1.0.0-rc.1&quot;" in body
    assert "^1.0<" not in body and "&quot;^1.0&quot;" not in body
    publish(folder, skills("7.0.0"))
    publish(folder, skills("8.0.0-rc.1", 0.4))
    packages = json.loads((root / "packages.json").read_text())["packages"]
    assert packages["skills"]["latest"] == "7.0.0" and packages["gamma"]["latest"] == "1.0.0-rc.1"
    _, _, body = get(App(root), "/")
    assert ">7.0.0<" in re.search(r'<tr data-search="skills.*?</tr>', body).group(0)
    _, _, body = get(App(root), "/packages/skills/")
    assert "<h1>skills <span class=muted>7.0.0</span>" in body and "mergepkg build skills@=7.0.0" in body
    _, _, body = get(App(root), "/packages/skills/8.0.0-rc.1/")
    assert 'the latest is <a href="../../../packages/skills/">7.0.0</a>' in body
    assert "mergepkg install skills@^8.0.0-rc.1</pre>" in body


def test_description_is_escaped_everywhere(reg):
    for path in ("/", "/packages/evil/", "/packages/evil/1.0.0/"):
        _, _, body = get(App(reg), path)
        assert "<script>alert" not in body and "&lt;script&gt;alert(1)&lt;/script&gt;" in body


def test_not_found_redirect_and_head(reg):
    application = App(reg)
    for path in ("/packages/nope/", "/packages/skills/9.9.9/", "/packages/a/b/c/d/", "/packages/../x/", "/packages/"):
        status, headers, body = get(application, path)
        assert status == 404 and headers["Content-Type"].startswith("text/html") and "Not found" in body, path
    status, headers, _ = get(application, "/packages/skills")
    assert status == 301 and headers["Location"] == "/packages/skills/"
    status, headers, body = get(application, "/packages/skills/", method="HEAD")
    assert status == 200 and body == "" and int(headers["Content-Length"]) > 1000
    assert get(application, "/nope.json")[1]["Content-Type"] == "application/json"  # the API's 404s stay JSON


def test_etags_and_changes(reg):
    application = App(reg)
    _, headers, _ = get(application, "/packages/skills/")
    status, _, body = get(application, "/packages/skills/", headers={"HTTP_IF_NONE_MATCH": headers["ETag"]})
    assert status == 304 and body == ""
    RegistryFolder(reg).yank("skills", "0.2.0", False)  # the page changes with the folder
    status, headers2, body = get(application, "/packages/skills/", headers={"HTTP_IF_NONE_MATCH": headers["ETag"]})
    assert status == 200 and headers2["ETag"] != headers["ETag"] and "<span class=muted>0.2.0</span>" in body


def test_lock_and_remote_are_shown(tmp_path):
    root = tmp_path / "reg"
    folder = new_registry(root)
    text = skills().replace('tags = ["tiny", "llama"]', 'tags = ["tiny"]\nremote = "hf://datasets/org/merges/m"')
    lock = LOCK.format(h="a" * 64, k="b" * 64, d="c" * 64)
    entry, _ = publish(folder, text, lock)
    assert entry.lock and entry.remote
    _, _, body = get(App(root), "/packages/skills/")
    assert '<a href="https://huggingface.co/datasets/org/merges/tree/main/m">hf://datasets/org/merges/m</a>' in body
    assert f"<code>{'b' * 64}</code>" in body and f"hf://datasets/org/merges/m/artifacts/{'b' * 64}/" in body
    assert f"sha256:{'c' * 64}" in body
    assert f'href="../../recipes/skills/0.1.0.lock">file</a></td><td class=hash><code>{entry.lock}' in body


def test_private_registry_pages_need_a_token(tmp_path):
    root = tmp_path / "private"
    RegistryFolder(root).init("p", private=True)
    assert get(App(root), "/")[0] == 401
    token = tokens.create(root, "reader", scopes=["read"])
    assert get(App(root), "/", headers={"HTTP_AUTHORIZATION": f"Bearer {token}"})[0] == 200


def test_static_site(reg, tmp_path, capsys):
    out = tmp_path / "site"
    assert cli(capsys, "registry", "site", reg, out, "--url", "https://host/reg")[0] == 0
    index = (out / "index.html").read_text()
    assert 'href="./packages/skills/index.html"' in index and 'id="filter" hidden' in index and "<script>" in index
    assert '<form action="' not in index and "?q=" not in index  # no server answers a search there
    page = (out / "packages/skills/0.1.0/index.html").read_text()  # 0.2.0 is yanked: no commands
    assert 'href="../../../index.html"' in page and "registry add team https://host/reg" in page
    assert (out / "packages/evil/index.html").is_file() and (out / "recipes/skills/0.1.0.toml").is_file()
    assert (out / "packages.json").is_file() and not (out / ".mergepkg").exists()
    with pytest.raises(RegistryError, match="outside the registry"):
        write_site(reg, reg / "site")


def test_pages_are_kept_once_whatever_the_host(reg, monkeypatch):
    """The Host header is the client's: a page kept per host let 100 hosts grow the server
    by 100 copies of a big page. One rendering is kept; each answer names its own host."""
    from mergepkg.registry import site

    application = App(reg)
    for i in range(50):
        _, _, body = get(application, "/packages/skills/", headers={"HTTP_HOST": f"h{i}.test"})
        assert f"registry add team http://h{i}.test\n" in body
    _, _, body = get(application, "/packages/skills/", headers={"HTTP_HOST": 'x"><script>alert(1)</script>'})
    assert "<script>alert" not in body and "http://x&quot;&gt;&lt;script&gt;" in body
    assert len(application.pages._kept) == 1
    monkeypatch.setattr(site, "KEEP_BYTES", 20_000)  # and the pages kept are bounded by their bytes
    for i in range(40):
        assert get(application, "/", f"q=tiny+{'x' * i}")[0] == 200
        assert get(application, "/packages/skills/0.1.0/")[0] == 200
        assert application.pages._kept_bytes <= 20_000
    assert application.pages._kept_bytes == sum(len(p[1]) for p in application.pages._kept.values())


def test_a_yanked_version_shows_no_commands_that_would_fail(reg):
    """install and build refuse a yanked version; its page says so instead of offering them."""
    _, _, body = get(App(reg), "/packages/skills/0.2.0/")
    use = body[body.index("<h2 id=use>") : body.index("<h2 id=steps>")]
    assert "mergepkg build" not in use and "mergepkg install" not in use and "<pre>" not in use
    assert "This version is yanked" in use and "a lock that already names it" in use
    assert 'Use the latest, <a href="../../../packages/skills/">0.1.0</a>' in use
    RegistryFolder(reg).yank("evil", "1.0.0")
    _, _, body = get(App(reg), "/packages/evil/")
    assert "Every version of this package is yanked" in body and "mergepkg build" not in body
    _, _, body = get(App(reg), "/packages/skills/")  # the latest, not yanked: the commands stay
    assert "mergepkg build skills@=0.1.0" in body and "registry add team http://reg.test:8780" in body


def test_control_characters_and_odd_paths(reg):
    """A CR/LF in a page's path was sent back in a redirect's Location (a 500 under waitress,
    or a header split); such a path is a 404, and a redirect's Location is percent-encoded."""
    application = App(reg)
    for path in ("/packages/skills\r\nSet-Cookie: x=1", "/packages/a\x00b", "/packages/x\x7f/"):
        status, headers, body = get(application, path)
        assert status == 404 and "Location" not in headers and "Not found" in body, repr(path)
    status, headers, _ = get(application, "/packages/sk ills")
    assert status == 301 and headers["Location"] == "/packages/sk%20ills/"
    status, headers, _ = get(application, "/packages/caf\xc3\xa9")  # PATH_INFO: UTF-8 bytes read as latin-1
    assert status == 301 and headers["Location"] == "/packages/caf%C3%A9/"


def test_head_answers_carry_no_body_and_405_says_allow(reg, tmp_path):
    """HEAD gets headers only, JSON errors too: a body after them is read as the next response."""
    application = App(reg)
    for path in ("/nope.json", "/packages/nope/", "/api/v1/publish", "/config.json", "/"):
        status, headers, body = get(application, path, method="HEAD")
        assert body == "" and int(headers["Content-Length"]) > 0, path
    assert get(application, "/api/v1/publish", method="HEAD")[0] == 405
    root = tmp_path / "private"
    RegistryFolder(root).init("p", private=True)
    status, headers, body = get(App(root), "/", method="HEAD")
    assert status == 401 and body == ""
    status, headers, _ = get(application, "/api/v1/yank")
    assert status == 405 and headers["Allow"] == "POST"
    status, headers, _ = get(application, "/config.json", method="DELETE")
    assert status == 405 and headers["Allow"] == "GET, HEAD"


def test_weak_if_none_match_matches(reg):
    """If-None-Match compares weakly (RFC 9110): `W/"x"` matches the ETag `"x"`."""
    application = App(reg)
    for path in ("/packages/skills/", "/config.json"):
        etag = get(application, path)[1]["ETag"]
        for sent in (f"W/{etag}", f'"other", W/{etag}'):
            assert get(application, path, headers={"HTTP_IF_NONE_MATCH": sent})[0] == 304, (path, sent)
        assert get(application, path, headers={"HTTP_IF_NONE_MATCH": 'W/"other"'})[0] == 200


def test_static_404_page_links_to_the_site(reg, tmp_path, capsys):
    """A static host shows 404.html at any missing path: its links went to the host's root
    and it had a search form no static host answers."""
    out = tmp_path / "site"
    assert cli(capsys, "registry", "site", reg, out, "--url", "https://host/reg/")[0] == 0
    page = (out / "404.html").read_text()
    assert '<a href="https://host/reg/index.html">team</a>' in page and "<form" not in page
    assert 'href="/"' not in page
    out = tmp_path / "site2"
    assert cli(capsys, "registry", "site", reg, out)[0] == 0
    page = (out / "404.html").read_text()
    assert '<a href="./index.html">team</a>' in page and "<form" not in page and 'href="/"' not in page


def test_site_of_a_folder_that_is_no_registry(reg, tmp_path, capsys):
    """`registry site` said what `registry serve` says, not a traceback; a missing
    packages.json is rebuilt from the index files, as a publish would."""
    empty = tmp_path / "empty"
    empty.mkdir()
    code, _, err = cli(capsys, "registry", "site", empty, tmp_path / "out1")
    assert code == 1 and "not a registry folder (no config.json)" in err and "Traceback" not in err
    assert not (tmp_path / "out1").exists()
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "config.json").write_text("{nope")
    code, _, err = cli(capsys, "registry", "site", bad, tmp_path / "out2")
    assert code == 1 and "config.json is not JSON" in err
    want = (reg / "packages.json").read_bytes()
    (reg / "packages.json").unlink()
    out = tmp_path / "out3"
    assert cli(capsys, "registry", "site", reg, out)[0] == 0
    assert (out / "packages.json").read_bytes() == want and (out / "packages/skills/index.html").is_file()
    (reg / "packages.json").write_text("[1, 2")  # damaged: rebuilt too, the file a publish writes
    assert cli(capsys, "registry", "site", reg, tmp_path / "out4")[0] == 0
    assert (tmp_path / "out4/packages.json").read_bytes() == want
