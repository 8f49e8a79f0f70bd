"""`mergepkg registry serve`: the real waitress server on 127.0.0.1 and the real client
against it: static reads with ETags, token-guarded writes and every rejection, concurrent
publishes, and a recipe published by one MERGEPKG_HOME built by name from another."""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import cli, load_tensors, run_cli
from registries import app, new_registry, serving, skills

from mergepkg.registry import tokens
from mergepkg.registry.index import read_index
from mergepkg.registry.server import MAX_BODY


@pytest.fixture
def served(tmp_path):
    """A registry folder served on a free port, with a token for `alice`: (url, token, root)."""
    root = tmp_path / "served"
    new_registry(root, "team")
    token = tokens.create(root, "alice")
    with serving(root) as url:
        yield url, token, root


def request(url, path, *, body=None, token=None, headers=None, method=None):
    """(status, headers, body bytes) of one request."""
    data = json.dumps(body).encode() if isinstance(body, dict) else body
    req = urllib.request.Request(
        url + path,
        data=data,
        method=method or ("POST" if data is not None else "GET"),
        headers={**(headers or {}), **({"Authorization": f"Bearer {token}"} if token else {})},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def publish_body(version="0.1.0", weight=0.5, **kw):
    return {"recipe": skills(version, weight, **kw), "lock": None}


# -- reads --------------------------------------------------------------------------------
def test_static_reads_with_etags(served):
    url, _, root = served
    status, headers, body = request(url, "/config.json")
    assert status == 200 and json.loads(body)["name"] == "team" and headers["Content-Type"] == "application/json"
    etag = headers["ETag"]
    status, headers, body = request(url, "/config.json", headers={"If-None-Match": etag})
    assert status == 304 and body == b""
    (root / "config.json").write_text('{"format": 1, "name": "renamed"}\n')
    status, headers, body = request(url, "/config.json", headers={"If-None-Match": etag})
    assert status == 200 and headers["ETag"] != etag
    assert request(url, "/index/nothing.jsonl")[0] == 404


@pytest.mark.parametrize(
    "path",
    [
        "/.mergepkg/tokens.json",
        "/../served/config.json",
        "/%2e%2e/x",
        "/config.json%00",
        "/index/..%2f..%2fetc/passwd",
        "//etc/passwd",
        "/recipes/",
        "/.mergepkg/write.lock",
    ],
)
def test_paths_outside_the_index_are_not_served(served, path):
    url, _, _ = served
    status, _, body = request(url, path)
    assert status == 404 and b"mpk_" not in body and b"sha256" not in body


def test_symlink_out_of_the_folder_is_not_served(served, tmp_path):
    url, _, root = served
    (tmp_path / "secret.txt").write_text("secret")
    (root / "index").mkdir(exist_ok=True)
    (root / "index" / "leak.jsonl").symlink_to(tmp_path / "secret.txt")
    assert request(url, "/index/leak.jsonl")[0] == 404


# -- writes and their rejections -------------------------------------------------------------
def test_publish_needs_a_valid_token(served):
    url, token, root = served
    status, _headers, body = request(url, "/api/v1/publish", body=publish_body())
    assert status == 401 and "bearer token is required" in json.loads(body)["error"]
    status, _, body = request(url, "/api/v1/publish", body=publish_body(), token="mpk_wrong")
    assert status == 403 and "not valid" in json.loads(body)["error"]
    assert not (root / "index").exists()
    status, _, body = request(url, "/api/v1/publish", body=publish_body(), token=token)
    assert status == 201 and json.loads(body)["entry"]["version"] == "0.1.0"
    tokens.revoke(root, "alice")  # takes effect at once
    assert request(url, "/api/v1/publish", body=publish_body("0.2.0"), token=token)[0] == 403


def test_publish_rejections(served):
    url, token, root = served
    assert request(url, "/api/v1/publish", body=publish_body(), token=token)[0] == 201
    status, _, body = request(url, "/api/v1/publish", body=publish_body(), token=token)
    assert status == 200 and json.loads(body)["published"] is False  # same bytes again
    status, _, body = request(url, "/api/v1/publish", body=publish_body(weight=0.9), token=token)
    assert status == 409 and "already published with other content" in json.loads(body)["error"]
    status, _, body = request(url, "/api/v1/publish", body=b"{not json", token=token)
    assert status == 400 and "malformed upload" in json.loads(body)["error"]
    status, _, body = request(url, "/api/v1/publish", body={"recipe": 42}, token=token)
    assert status == 400
    status, _, body = request(url, "/api/v1/publish", body={"recipe": "[package\n"}, token=token)
    assert status == 400 and "invalid TOML" in json.loads(body)["error"]
    status, _, body = request(url, "/api/v1/publish", body=publish_body(name="../../etc"), token=token)
    assert status == 400 and "invalid package name" in json.loads(body)["error"]
    local = skills(version="0.3.0", extra='mine = { path = "/tmp" }\n')
    status, _, body = request(url, "/api/v1/publish", body={"recipe": local}, token=token)
    assert status == 400 and "cannot be published: mine" in json.loads(body)["error"]
    big = {"recipe": skills("0.4.0") + "#" * (MAX_BODY + 10)}
    status, _, body = request(url, "/api/v1/publish", body=big, token=token)
    assert status == 413
    status, _, body = request(url, "/api/v1/publish", body=publish_body(name="ABC"), token=token)
    assert status == 400 and json.loads(body)["error"].startswith("invalid package name 'ABC'")
    assert "malformed" not in json.loads(body)["error"] and "team/name" in json.loads(body)["hint"]
    nested = b'{"recipe": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    assert request(url, "/api/v1/publish", body=nested, token=token)[0] == 400
    assert request(url, "/api/v1/publish", token=token, method="GET")[0] == 405
    assert request(url, "/config.json", body=b"x", token=token, method="PUT")[0] == 405
    (entry,) = read_index((root / "index/skills.jsonl").read_text(), "i")  # only the first publish landed
    assert entry.version == "0.1.0"
    assert sorted(p.name for p in (root / "recipes/skills").iterdir()) == ["0.1.0.toml"]


def test_yank_over_http(served):
    url, token, _root = served
    request(url, "/api/v1/publish", body=publish_body(), token=token)
    assert request(url, "/api/v1/yank", body={"name": "skills", "version": "0.1.0"})[0] == 401
    status, _, body = request(url, "/api/v1/yank", body={"name": "skills", "version": "0.1.0"}, token=token)
    assert status == 200 and json.loads(body)["entry"]["yanked"] is True
    status, _, body = request(url, "/api/v1/yank", body={"name": "skills", "version": "0.9.0"}, token=token)
    assert status == 404
    status, _, body = request(url, "/api/v1/yank", body={"name": "../index/skills", "version": "0.1.0"}, token=token)
    assert status == 400 and "invalid package name" in json.loads(body)["error"]
    status, _, body = request(url, "/api/v1/yank", body={"name": "skills", "version": "../../x"}, token=token)
    assert status == 400 and "semantic version" in json.loads(body)["error"]
    status, _, body = request(
        url, "/api/v1/yank", body={"name": "skills", "version": "0.1.0", "yanked": False}, token=token
    )
    assert json.loads(body)["entry"]["yanked"] is False


def test_concurrent_publishes_all_land(served):
    url, token, root = served
    versions = [f"0.{i}.0" for i in range(12)]
    with ThreadPoolExecutor(12) as pool:
        statuses = list(
            pool.map(lambda v: request(url, "/api/v1/publish", body=publish_body(v), token=token)[0], versions)
        )
    assert statuses == [201] * 12
    entries = read_index((root / "index/skills.jsonl").read_text(), "i")
    assert sorted(e.version for e in entries) == sorted(versions)
    assert json.loads((root / "packages.json").read_text())["packages"]["skills"]["latest"] == "0.11.0"
    assert not [p for p in root.rglob("*.tmp")]


# -- the whole flow across two homes ----------------------------------------------------------
def test_publish_search_install_build_from_another_home(served, tiny_hub, tmp_path, capsys, monkeypatch, models):
    url, token, _root = served
    monkeypatch.setenv("COLUMNS", "200")
    # alice publishes skills and an app that depends on it
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "alice"))
    assert cli(capsys, "registry", "add", "team", url, "--token", token)[0] == 0
    for text, name in ((skills(), "skills.toml"), (app(), "app.toml")):
        (tmp_path / name).write_text(text)
        code, out, err = cli(capsys, "publish", tmp_path / name, "-r", "team")
        assert code == 0, err
    code, _, err = cli(capsys, "publish", tmp_path / "skills.toml", "-r", "team")
    assert code == 0 and "already published" in err
    (tmp_path / "skills.toml").write_text(skills(weight=0.9))
    code, _, err = cli(capsys, "publish", tmp_path / "skills.toml", "-r", "team")
    assert code == 1 and "team refused" in err and "already published with other content" in err

    # bob, with his own home and no token, finds it, installs it and builds it by name
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "bob"))
    assert cli(capsys, "registry", "add", "team", url)[0] == 0
    code, out, _ = cli(capsys, "search", "tiny")
    assert "skills" in out and "app" not in out
    code, out, err = cli(capsys, "install", "app@^0.1")
    assert code == 0 and "installed app 0.1.0" in err and "installed skills 0.1.0" in err
    code, out, err = cli(capsys, "build", "app", "--out", tmp_path / "bob-out", "-q")
    assert code == 0, err
    got = load_tensors(out.strip())
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(out.strip())
    assert set(got) == set(load_tensors(models["base"]))
    (installed_lock,) = (tmp_path / "bob/packages/app").glob("*.lock")  # beside the installed recipe
    from mergepkg.lockfile import read_lock

    locked = read_lock(installed_lock)
    assert locked.dependencies["skills"].version == "0.1.0" and locked.dependencies["skills"].registry == url
    assert {"final", "skills::skills"} <= set(locked.steps)
    code, _, err = cli(capsys, "publish", tmp_path / "app.toml", "-r", "team")
    assert code == 1 and "bearer token is required" in err and "--token TOKEN" in err


def test_repeat_reads_are_conditional_and_work_offline(tmp_path, capsys, monkeypatch):
    root = tmp_path / "served"
    folder = new_registry(root, "team")
    from mergepkg.recipe.parse import parse_recipe

    data = skills().encode()
    folder.publish(parse_recipe(data.decode(), tmp_path / "s.toml"), data)
    seen = []
    from mergepkg.registry import server as server_module

    real = server_module.App.read

    def counting(self, path, environ, start_response):
        def start(status, headers):
            seen.append((path, status.split()[0]))
            return start_response(status, headers)

        return real(self, path, environ, start)

    monkeypatch.setattr(server_module.App, "read", counting)
    with serving(root) as url:
        assert cli(capsys, "registry", "add", "team", url)[0] == 0
        assert cli(capsys, "info", "skills")[0] == 0
        assert cli(capsys, "info", "skills")[0] == 0
    assert seen == [("/index/skills.jsonl", "200"), ("/index/skills.jsonl", "304")]
    # the server is gone: what was fetched before still answers, --offline too
    code, out, err = cli(capsys, "info", "skills")
    assert code == 0 and "0.1.0" in out
    assert cli(capsys, "info", "skills", "--offline")[0] == 0
    code, _, err = cli(capsys, "search", "tiny")
    assert code == 1 and "cannot reach the registry" in err and "Traceback" not in err


@pytest.mark.slow
def test_registry_serve_command(tmp_path):
    """The real `mergepkg registry serve` process; tokens made with the real command."""
    import subprocess

    from helpers import MERGEPKG

    root = tmp_path / "reg"
    assert run_cli("registry", "init", root, "--name", "team").returncode == 0
    made = run_cli("registry", "token", "create", root, "--label", "ci")
    assert made.returncode == 0 and made.stdout.strip().startswith("mpk_")
    assert "mpk_" not in (root / ".mergepkg/tokens.json").read_text()  # only its hash is kept
    # --port 0: the server binds a free port and says which; it listens from that line on
    proc = subprocess.Popen(
        [MERGEPKG, "registry", "serve", root, "--port", "0"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stderr is not None
        said = ""
        while (bound := re.search(r"http://127\.0\.0\.1:(\d+)", said)) is None:
            line = proc.stderr.readline()
            assert line, f"registry serve exited ({proc.wait(10)}): {said}"
            said += line
        url = bound.group(0)
        assert request(url, "/config.json")[0] == 200
        status, _, _ = request(url, "/api/v1/publish", body=publish_body(), token=made.stdout.strip())
        assert status == 201
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        proc.stderr.close()


def test_uploads_are_checked_against_this_registry(served):
    """What a client's own checks would catch, the server catches too (an upload may come
    from curl): dependencies it lacks, steps they lack, a recipe depending on itself."""
    url, token, _root = served
    assert request(url, "/api/v1/publish", body=publish_body(), token=token)[0] == 201
    for text, want in (
        (app(rng="^0.5"), "depends on skills ^0.5, and this registry has no such version"),
        (app().replace('step = "skills"', 'step = "nope"'), "skills@0.1.0 has no step 'nope'"),
        (skills(name="loop", deps='[dependencies]\nloop = "^0.1"\n'), "depends on itself"),
    ):
        status, _, body = request(url, "/api/v1/publish", body={"recipe": text}, token=token)
        assert status == 400 and want in json.loads(body)["error"], body
    assert request(url, "/api/v1/publish", body={"recipe": app()}, token=token)[0] == 201


def test_offline_and_unreachable_registries_fall_through(tmp_path, capsys, monkeypatch):
    """Two registries: the package is only in the second. Offline, or with the first
    one down, what was fetched before still answers."""
    first, second = tmp_path / "one", tmp_path / "two"
    new_registry(first, "one")
    folder = new_registry(second, "two")
    from mergepkg.recipe.parse import parse_recipe

    data = skills().encode()
    folder.publish(parse_recipe(data.decode(), tmp_path / "s.toml"), data)
    with serving(first) as one, serving(second) as two:
        assert cli(capsys, "registry", "add", "one", one)[0] == 0
        assert cli(capsys, "registry", "add", "two", two)[0] == 0
        assert cli(capsys, "info", "skills")[0] == 0
        code, _, err = cli(capsys, "info", "skills", "--offline")
        assert code == 0, err
    code, out, err = cli(capsys, "info", "skills")  # both servers gone
    assert code == 0 and "0.1.0" in out, err
    code, _, err = cli(capsys, "info", "nothing")
    assert code == 1 and "cannot reach the registry" in err


def test_a_5xx_falls_back_to_what_was_fetched(tmp_path, capsys, monkeypatch):
    root = tmp_path / "served"
    folder = new_registry(root, "team")
    from mergepkg.recipe.parse import parse_recipe
    from mergepkg.registry import server as server_module

    data = skills().encode()
    folder.publish(parse_recipe(data.decode(), tmp_path / "s.toml"), data)
    broken = {"now": False}
    real = server_module.App.read

    def flaky(self, path, environ, start_response):
        if broken["now"]:
            start_response("502 Bad Gateway", [("Content-Type", "text/plain")])
            return [b"bad gateway"]
        return real(self, path, environ, start_response)

    monkeypatch.setattr(server_module.App, "read", flaky)
    with serving(root) as url:
        assert cli(capsys, "registry", "add", "team", url)[0] == 0
        assert cli(capsys, "info", "skills")[0] == 0
        broken["now"] = True
        code, out, err = cli(capsys, "info", "skills")
        assert code == 0 and "0.1.0" in out, err
        code, _, err = cli(capsys, "info", "other")
        assert code == 1 and "answered 502" in err


def test_tokens_go_only_to_their_registry_and_not_through_redirects(served, tmp_path, capsys, monkeypatch):
    url, token, root = served
    (tmp_path / "s.toml").write_text(skills())
    assert cli(capsys, "registry", "add", "team", url)[0] == 0
    monkeypatch.setenv("MERGEPKG_TOKEN_OTHER", token)  # another registry's variable: not sent
    code, _, err = cli(capsys, "publish", tmp_path / "s.toml", "-r", "team")
    assert code == 1 and "bearer token is required" in err and "MERGEPKG_TOKEN_TEAM" in err
    monkeypatch.setenv("MERGEPKG_TOKEN_TEAM", token)
    assert cli(capsys, "publish", tmp_path / "s.toml", "-r", "team")[0] == 0

    from waitress import create_server

    seen = []

    def redirect(environ, start_response):  # a registry that moved: 307 to the real one
        seen.append(environ.get("HTTP_AUTHORIZATION"))
        start_response("307 Temporary Redirect", [("Location", url + environ["PATH_INFO"]), ("Content-Length", "0")])
        return [b""]

    server = create_server(redirect, host="127.0.0.1", port=0)
    import threading

    threading.Thread(target=server.run, daemon=True).start()
    moved = f"http://127.0.0.1:{server.effective_port}"
    try:
        assert cli(capsys, "registry", "add", "moved", moved, "--token", token)[0] == 0
        (tmp_path / "s.toml").write_text(skills("0.2.0"))
        code, _, err = cli(capsys, "publish", tmp_path / "s.toml", "-r", "moved")
        assert code == 1 and "redirected to" in err and "final URL" in err
        assert len(read_index((root / "index/skills.jsonl").read_text(), "i")) == 1  # nothing went through
    finally:
        server.close()


def test_a_port_taken_a_bad_host_and_a_far_expiry_are_one_line(tmp_path, capsys):
    import socket

    root = tmp_path / "reg"
    assert cli(capsys, "registry", "init", root, "--name", "team")[0] == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, _, err = cli(capsys, "registry", "serve", root, "--port", port)
        assert code == 1 and "cannot listen on" in err and "Traceback" not in err
    code, _, err = cli(capsys, "registry", "serve", root, "--host", "256.1.1.1")
    assert code == 1 and "cannot listen on 256.1.1.1" in err
    code, _, err = cli(capsys, "registry", "token", "create", root, "--label", "b", "--expires", "99999999d")
    assert code == 2 and "--expires" in err and "Traceback" not in err


def test_registry_names_are_names_and_never_share_a_token_variable(tmp_path, capsys):
    """team-a and team_a would both read MERGEPKG_TOKEN_TEAM_A: one token for two registries."""
    root = tmp_path / "reg"
    assert cli(capsys, "registry", "init", root, "--name", "team")[0] == 0
    assert cli(capsys, "registry", "add", "team-a", root)[0] == 0
    code, _, err = cli(capsys, "registry", "add", "Team_A", root)
    assert code == 1 and "MERGEPKG_TOKEN_TEAM_A" in err
    code, _, err = cli(capsys, "registry", "add", "bad name!", root)
    assert code == 1 and "invalid registry name" in err


def test_an_upload_that_would_depend_on_itself_through_another_is_refused(served):
    url, token, root = served
    assert request(url, "/api/v1/publish", body=publish_body(), token=token)[0] == 201
    assert request(url, "/api/v1/publish", body={"recipe": app(), "lock": None}, token=token)[0] == 201
    circular = publish_body(
        "0.1.1", deps='[dependencies]\napp = "^0.1"\n', extra='final = { dependency = "app", step = "final" }\n'
    )
    status, _, body = request(url, "/api/v1/publish", body=circular, token=token)
    assert status == 400 and "skills would depend on itself: skills -> app@0.1.0 -> skills" in json.loads(body)["error"]
    assert len(read_index((root / "index/skills.jsonl").read_text(), "i")) == 1


def test_a_listed_dependency_whose_file_is_missing_is_a_json_500(served):
    """The index lists skills@0.1.0 but its recipe file is gone: the server said waitress's
    generic 500 page (and logged a traceback); it says what is damaged, naming no path of its own."""
    url, token, root = served
    assert request(url, "/api/v1/publish", body=publish_body(), token=token)[0] == 201
    (root / "recipes/skills/0.1.0.toml").unlink()
    status, headers, body = request(url, "/api/v1/publish", body={"recipe": app()}, token=token)
    assert status == 500 and headers["Content-Type"] == "application/json", body
    answer = json.loads(body)
    assert "the registry lists skills@0.1.0 but its file is missing" in answer["error"]
    assert str(root) not in answer["error"] and "maintainer" in answer["hint"]
    assert not (root / "index/app.jsonl").exists()


def test_an_upload_with_a_stale_lock_is_refused(served):
    """`publish` refuses a lock made before the recipe last changed; an upload (curl) with
    one got 201. The server refuses it the same way, with the same check."""
    from mergepkg.lockfile import recipe_hash
    from mergepkg.registry.folder import parse_published

    url, token, root = served
    text = skills()
    current = f'version = 1\nrecipe = "{recipe_hash(parse_published(text.encode(), "r.toml"))}"\n'
    stale = f'version = 1\nrecipe = "{recipe_hash(parse_published(skills(weight=0.9).encode(), "r.toml"))}"\n'
    status, _, body = request(url, "/api/v1/publish", body={"recipe": text, "lock": stale}, token=token)
    answer = json.loads(body)
    assert status == 400 and "recipe.lock is out of date: the recipe changed since it was locked" in answer["error"]
    assert "mergepkg lock" in answer["hint"] and not (root / "index/skills.jsonl").exists()
    assert request(url, "/api/v1/publish", body={"recipe": text, "lock": current}, token=token)[0] == 201


def test_an_upload_with_a_stale_lock_of_a_dependent_is_refused(served, tiny_hub, tmp_path, capsys, monkeypatch):
    """Real locks from `mergepkg lock`, one with a dependency (its steps are in the lock's
    recipe hash): a current lock is accepted, one the recipe changed since is refused."""
    url, token, _root = served
    assert cli(capsys, "registry", "add", "team", url, "--token", token)[0] == 0
    files = {}
    for text, name in ((skills(), "skills.toml"), (app(), "app.toml")):
        (tmp_path / name).write_text(text)
        assert cli(capsys, "lock", tmp_path / name)[0] == 0
        files[name] = (text, (tmp_path / name).with_suffix(".lock").read_text())
        status, _, body = request(url, "/api/v1/publish", body={"recipe": text, "lock": files[name][1]}, token=token)
        assert status == 201, body
    for name, text in (("skills.toml", skills("0.2.0")), ("app.toml", app(version="0.2.0", rng=">=0.1"))):
        status, _, body = request(url, "/api/v1/publish", body={"recipe": text, "lock": files[name][1]}, token=token)
        assert status == 400 and "out of date" in json.loads(body)["error"], body
        (tmp_path / name).write_text(text)  # the client refuses it alike
        code, _, err = cli(capsys, "publish", tmp_path / name, "-r", "team")
        assert code == 1 and "is out of date: the recipe changed since it was locked" in err


def test_raw_requests_head_and_control_characters(served):
    """Over a real connection: a HEAD answered with a JSON error carried its body, read by
    the client as the start of the next response; a CR/LF in a page path was a 500."""
    import socket

    url, _, _ = served
    port = int(url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(
            b"HEAD /nope.json HTTP/1.1\r\nHost: x\r\n\r\n"
            b"HEAD /api/v1/publish HTTP/1.1\r\nHost: x\r\n\r\n"
            b"GET /config.json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        )
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    answers = data.split(b"\r\n\r\n")
    assert answers[0].startswith(b"HTTP/1.1 404 ") and answers[1].startswith(b"HTTP/1.1 405 ")
    assert b"Allow: POST" in answers[1] and answers[2].startswith(b"HTTP/1.1 200 "), data
    assert json.loads(answers[3])["name"] == "team"
    status, headers, body = request(url, "/packages/skills%0d%0aSet-Cookie:%20x=1")
    assert status == 404 and "Set-Cookie" not in headers and b"Not found" in body
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        s.sendall(b"GET /packages/sk%20ills%C3%A9 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    assert data.startswith(b"HTTP/1.1 301 ") and b"\r\nLocation: /packages/sk%20ills%C3%A9/\r\n" in data, data
