"""Joining the cluster and saying a task's failure, without a cluster: an address nothing
answers at fails in seconds (Ray itself retries it for many minutes), and a task's
exception is one line naming what it raised and its node, not Ray's traceback."""

from __future__ import annotations

import socket
import time

import pytest

from mergepkg.cluster import connect as connecting
from mergepkg.cluster.connect import probe, task_failure
from mergepkg.errors import BuildError


def test_an_address_nothing_answers_at_fails_at_once_before_ray_is_asked(monkeypatch):
    class Ray:  # Ray, not connected; joining would be a failure of the test
        def is_initialized(self):
            return False

        def init(self, **_):
            raise AssertionError("ray.init was called")

    monkeypatch.setattr(connecting, "ray_module", Ray)
    started = time.monotonic()
    unreachable = r"cannot reach a Ray cluster at '127.0.0.1:1': .* at 127.0.0.1:1"
    with pytest.raises(BuildError, match=unreachable) as e, connecting.connect("127.0.0.1:1"):
        pass
    assert time.monotonic() - started < 10 and "ray start --head" in (e.value.hint or "")


def test_the_probe_lets_a_listening_address_through_and_leaves_auto_to_ray(monkeypatch):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        probe(f"127.0.0.1:{port}")
        probe(f"ray://127.0.0.1:{port}")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    probe("auto")  # Ray finds the cluster this machine joined
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:1")
    with pytest.raises(BuildError, match="cannot reach"):
        probe("auto")


def test_a_tasks_exception_is_one_line_naming_its_node():
    from ray.exceptions import RayTaskError, WorkerCrashedError

    traceback = (
        "\x1b[36mray::mergepkg bad 48cb10465038()\x1b[39m (pid=17521, ip=192.0.2.2)\n"
        '  File "/work/main/mergepkg/cluster/worker.py", line 58, in run_step\n'
        "    session = Session(job.engine.settings())\n"
        "NotADirectoryError: [Errno 20] Not a directory: '/tmp/afile/home'"
    )
    cause = NotADirectoryError(20, "Not a directory", "/tmp/afile/home")
    raised = RayTaskError("run_step", traceback, cause, proctitle="ray::x", pid=1, ip="192.0.2.2").as_instanceof_cause()
    assert task_failure(raised) == (
        "NotADirectoryError: [Errno 20] Not a directory: '/tmp/afile/home' (on the node at 192.0.2.2)"
    )
    assert task_failure(WorkerCrashedError()).startswith("WorkerCrashedError: The worker died unexpectedly")
    assert "\n" not in task_failure(RuntimeError("one\ntwo\x1b[31m three\x1b[0m"))
    assert task_failure(RuntimeError("one\ntwo\x1b[31m three\x1b[0m")) == "RuntimeError: two three"


def test_the_drivers_and_tunes_errors_say_a_failed_task_in_one_line():
    from ray.exceptions import RayTaskError

    from mergepkg.cluster.calls import Call, answers
    from mergepkg.cluster.driver import _answer

    cause = OSError("disk gone")
    raised = RayTaskError(
        "f", "ray::f() (pid=1, ip=10.0.0.7)\nTraceback\nOSError: disk gone", cause, "p", 1, "10.0.0.7"
    )

    class Ray:
        def get(self, ref):
            raise raised.as_instanceof_cause()

        def cancel(self, ref, force=False):
            pass

    with pytest.raises(BuildError) as e:
        _answer(Ray(), object(), "m")
    assert e.value.message == "step 'm' failed on the cluster: OSError: disk gone (on the node at 10.0.0.7)"
    with pytest.raises(BuildError) as e:
        list(answers(Ray(), [Call((), "trial 3")], [object()]))
    assert e.value.message == "trial 3 failed on the cluster: OSError: disk gone (on the node at 10.0.0.7)"


@pytest.mark.parametrize("address", ["127.0.0.1", "localhost:abc"])
def test_an_address_ray_cannot_read_is_one_line(address):
    """Ray's ValueError was a traceback; the probe leaves such an address to Ray."""
    with pytest.raises(BuildError, match=f"not a Ray cluster's address: '{address}'") as e, connecting.connect(address):
        pass
    assert "HOST:PORT" in (e.value.hint or "")


def test_an_s3_clients_hiccup_is_retried_as_an_os_error_is():
    """botocore's errors are not OSErrors: Ray's retry_exceptions=[OSError] never matched
    one, so an S3 remote unreachable for a moment ended the whole cluster build. What is
    retried is what a remote's command calls unreachable: one list (remote/errors.py)."""
    from botocore.exceptions import EndpointConnectionError

    from mergepkg.remote.errors import RemoteError, reaching, remote_errors

    hiccup = EndpointConnectionError(endpoint_url="http://127.0.0.1:9")
    assert not isinstance(hiccup, OSError)
    assert any(isinstance(hiccup, kind) for kind in connecting.retryable())
    assert OSError in connecting.retryable() and connecting.retryable() == list(remote_errors())
    with pytest.raises(RemoteError, match="cannot reach the remote"), reaching("s3://bucket"):
        raise hiccup


def test_the_clis_sigterm_handler_outlives_ray_init(monkeypatch):
    """ray.init sets its own SIGTERM handler (sys.exit) and never restores it: a `kill`
    during a --ray build exited 15, without the CLI's cleanup or message."""
    import signal

    class Ray:  # what ray.init does to SIGTERM (ray/_private/worker.py), and nothing else
        def is_initialized(self):
            return False

        def init(self, **_):
            signal.signal(signal.SIGTERM, lambda *a: None)

        def shutdown(self):
            pass

    def ours(signum, frame):
        raise KeyboardInterrupt

    monkeypatch.setattr(connecting, "ray_module", Ray)
    before = signal.signal(signal.SIGTERM, ours)
    try:
        with socket.socket() as server:
            server.bind(("127.0.0.1", 0))
            server.listen()
            with connecting.connect(f"127.0.0.1:{server.getsockname()[1]}"):
                assert signal.getsignal(signal.SIGTERM) is ours
    finally:
        signal.signal(signal.SIGTERM, before)
