"""`registry serve` under abuse, on 127.0.0.1 and bounded in time: slow clients, floods of
connections, oversized bodies; scoped tokens, the audit log, private registries."""

from __future__ import annotations

import json
import socket
import time
import urllib.error
import urllib.request
from contextlib import ExitStack

import pytest
from helpers import cli
from registries import new_registry, serving, skills

from mergepkg.registry import audit, tokens
from mergepkg.registry.server import Limits

pytestmark = pytest.mark.slow  # a real server, waiting out its timeouts

LIMITS = Limits(request_seconds=2, idle_seconds=2, per_client=4, total=64, check_every=1)


@pytest.fixture
def served(tmp_path):
    root = tmp_path / "served"
    new_registry(root, "team")
    with serving(root, LIMITS) as url:
        yield url, root


def connect(url: str, source: str = "127.0.0.1") -> socket.socket:
    """A TCP connection to the server from `source` (any 127.x address is this machine)."""
    host, port = url.removeprefix("http://").split(":")
    s = socket.socket()
    s.settimeout(10)
    s.bind((source, 0))
    s.connect((host, int(port)))
    return s


def closed_within(s: socket.socket, seconds: float) -> float | None:
    """Seconds until the server closed `s` (reads return nothing or fail), or None."""
    t0 = time.monotonic()
    s.settimeout(0.2)
    while time.monotonic() - t0 < seconds:
        try:
            if s.recv(4096) == b"":
                return time.monotonic() - t0
        except TimeoutError:
            continue
        except OSError:
            return time.monotonic() - t0
    return None


def get(url: str, path: str = "/config.json", source: str = "127.0.0.2") -> int:
    """A complete GET from another client address; its status."""
    s = connect(url, source)
    with s:
        s.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    return int(data.split(b" ", 2)[1])


def test_a_slow_client_is_cut_off_and_others_are_served(served):
    url, _ = served
    slow = connect(url)
    slow.sendall(b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\n")
    t0 = time.monotonic()
    closed = None
    while time.monotonic() - t0 < 30:  # a client the server never cut off would trickle on
        try:
            slow.sendall(b"X-Trickle: 1\r\n")  # a header line every 0.3 s: never idle, never done
        except OSError:
            closed = time.monotonic() - t0
            break
        if closed_within(slow, 0.3) is not None:
            closed = time.monotonic() - t0
            break
    # cut off at its deadline, give or take a check and a loaded machine's delays
    assert closed is not None and closed < LIMITS.request_seconds + 2 * LIMITS.check_every + 5, closed
    assert get(url) == 200


def test_an_idle_connection_is_closed(served):
    url, _ = served
    with connect(url) as idle:
        took = closed_within(idle, LIMITS.idle_seconds + 3 * LIMITS.check_every + 2)
    assert took is not None, "the idle connection stayed open"


def test_a_flood_from_one_client_leaves_room_for_the_others(served):
    url, _ = served
    with ExitStack() as stack:
        flood = [stack.enter_context(connect(url)) for _ in range(110)]
        held, deadline = flood, time.monotonic() + 10  # refusals seen as the server gets to them
        while len(held) > LIMITS.per_client and time.monotonic() < deadline:
            held = [s for s in held if closed_within(s, 0.05) is None]
        assert len(held) <= LIMITS.per_client, f"{110 - len(held)} of 110 refused"
        t0 = time.monotonic()
        assert get(url) == 200  # another client, at once
        assert time.monotonic() - t0 < 2


def test_an_oversized_body_is_refused_before_it_is_sent(served):
    url, _ = served
    with connect(url) as s:
        s.sendall(b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000000\r\n\r\n")
        s.settimeout(5)
        answer = s.recv(4096)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:100]


def post(url: str, action: str, body: dict, token: str) -> tuple[int, dict]:
    req = urllib.request.Request(
        f"{url}/api/v1/{action}",
        data=json.dumps(body).encode(),
        method="POST",
        headers={"Authorization": f"Bearer {token}"},
    )
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, json.loads(r.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read())


def test_scoped_tokens_and_the_audit_log(served, capsys):
    url, root = served
    team = tokens.create(root, "ci", scopes=["publish"], packages=["team/*", "skills"])
    admin = tokens.create(root, "admin", scopes=["yank"])
    assert post(url, "publish", {"recipe": skills(), "lock": None}, team)[0] == 201
    status, body = post(url, "publish", {"recipe": skills(name="other"), "lock": None}, team)
    assert status == 403 and "may not publish other" in body["error"]
    assert post(url, "yank", {"name": "skills", "version": "0.1.0"}, team)[0] == 403
    assert post(url, "yank", {"name": "skills", "version": "0.1.0"}, admin)[0] == 200
    rows = audit.read(root / ".mergepkg")
    assert [(r["who"], r["action"], r["name"], r["version"]) for r in rows] == [
        ("ci", "publish", "skills", "0.1.0"),
        ("admin", "yank", "skills", "0.1.0"),
    ]
    assert rows[0]["from"] == "127.0.0.1" and len(rows[0]["sha256"]) == 64
    code, out, _ = cli(capsys, "registry", "log", root)
    assert code == 0 and "ci" in out and "admin" in out and "skills@0.1.0" in out
    code, out, _ = cli(capsys, "registry", "token", "list", root)
    assert code == 0 and "team/*" in out and "publish" in out


def test_a_private_registry_reads_only_with_a_token(tmp_path, mergepkg_home, capsys, tiny_hub):
    root = tmp_path / "private"
    code, _, err = cli(capsys, "registry", "init", root, "--name", "team", "--private")
    assert code == 0, err
    writer = tokens.create(root, "writer")
    reader = tokens.create(root, "reader", scopes=["read"])
    with serving(root, LIMITS) as url:
        assert post(url, "publish", {"recipe": skills(), "lock": None}, writer)[0] == 201
        assert get(url, "/packages.json") == 401
        code, _, err = cli(capsys, "registry", "add", "team", url)
        code, _, err = cli(capsys, "search", "skills")
        assert code == 1 and "401" in err, err
        cli(capsys, "registry", "remove", "team")
        code, _, err = cli(capsys, "registry", "add", "team", url, "--token", reader)
        code, out, err = cli(capsys, "search", "skills")
        assert code == 0 and "skills" in out, err
        code, out, err = cli(capsys, "install", "skills")
        assert code == 0, err
