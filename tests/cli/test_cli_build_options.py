"""`mergepkg build`'s options with and without --ray: the cluster's options are usage
errors without it, what a cluster build cannot honour is refused, and what only the
nodes need (a GPU) is not asked of the driver."""

from __future__ import annotations

import pytest
from helpers import cli

import mergepkg.cli.build as build_command
from mergepkg.errors import BuildError

LINEAR = '[steps.m]\nmethod = "linear"\ninputs = [{ model = "ft1", weight = 0.5 }, { model = "ft2", weight = 0.5 }]\n'


@pytest.fixture
def asked(monkeypatch):
    """The cluster build, stopped where it would start: what it was asked."""
    calls: list[dict] = []

    def build_on_cluster(recipes, session, **kw):
        calls.append({"session": session, **kw})
        raise BuildError("stopped here")

    monkeypatch.setattr(build_command, "choose_remote", lambda *_: type("Remote", (), {"url": "file:///r"}))
    monkeypatch.setattr(build_command, "build_on_cluster", build_on_cluster)
    return calls


@pytest.mark.parametrize(
    ("args", "option"),
    [
        (["--split", "3"], "--split"),
        (["--split", "3", "--split-bytes", "1"], "--split"),
        (["--split-bytes", "1MB"], "--split-bytes"),
        (["-r", "shared"], "--remote"),
    ],
)
def test_the_clusters_options_without_ray_are_usage_errors(capsys, recipe_file, args, option):
    code, _, err = cli(capsys, "build", recipe_file(LINEAR), *args)
    assert code == 2 and f"{option} needs --ray" in err, err


@pytest.mark.parametrize(
    ("option", "text"),
    [("--max-memory", "1.5.5GB"), ("--max-memory", "."), ("--max-memory", "0.1B"), ("--shard-size", "1.5.5GB")],
)
def test_a_size_that_is_no_number_is_a_usage_error(capsys, recipe_file, option, text):
    """'1.5.5GB' and '.' passed the size pattern and failed in float(): a traceback."""
    code, _, err = cli(capsys, "build", recipe_file(LINEAR), option, text)
    assert code == 2 and option in err and "expected a size" in err and "Traceback" not in err, err


def test_split_bytes_needs_split(capsys, recipe_file, asked):
    code, _, err = cli(capsys, "build", recipe_file(LINEAR), "--ray", "auto", "--split-bytes", "1MB")
    assert code == 2 and "--split-bytes needs --split N" in err, err


def test_split_is_given_to_the_cluster_build(capsys, recipe_file, asked):
    from mergepkg.cluster.plan import Split

    code, _, err = cli(capsys, "build", recipe_file(LINEAR), "--ray", "auto", "--split", "3", "-r", "shared")
    assert code == 1 and "stopped here" in err
    code, _, err = cli(capsys, "build", recipe_file(LINEAR), "--ray", "auto", "--split", "2", "--split-bytes", "5MB")
    assert code == 1 and "stopped here" in err
    assert [a["split"] for a in asked] == [Split(3, 10**9), Split(2, 5 * 10**6)]
    assert [a["remote_name"] for a in asked] == ["shared", None]


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--ray", "auto", "--prefer-remote"], "--prefer-remote cannot go with --ray"),
        (["--ray", "auto", "--no-remote"], "--no-remote cannot go with it"),
        (["--locked", "--frozen"], "--locked and --frozen exclude each other"),
        (["--out", "x", "second.toml"], "--out takes one recipe"),
    ],
)
def test_options_that_cannot_go_together_are_usage_errors(capsys, recipe_file, asked, args, says):
    """Exit 2 with click's usage message, as docs/commands/build.md says of usage errors
    (they were located errors, exit 1)."""
    code, out, err = cli(capsys, "build", recipe_file(LINEAR), *args)
    assert code == 2 and says in err and "Usage:" in err and not asked and not out, err


def test_cuda_with_ray_is_the_nodes_to_check_not_the_drivers(capsys, recipe_file, asked, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # a driver with no GPU
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    code, _, err = cli(capsys, "build", recipe_file(LINEAR), "--device", "cuda")
    assert code == 1 and "no CUDA device" in err, err  # a local build needs one here
    code, _, err = cli(capsys, "build", recipe_file(LINEAR), "--ray", "auto", "--device", "cuda")
    assert code == 1 and "stopped here" in err, err
    assert asked[0]["session"].settings.device == "cuda"


def test_offline_with_ray_goes_to_the_nodes(capsys, recipe_file, asked, monkeypatch):
    from mergepkg.cluster.jobs import Engine

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    code, _, _ = cli(capsys, "build", recipe_file(LINEAR), "--ray", "auto", "--offline")
    assert code == 1 and Engine.of(asked[0]["session"].settings).offline
