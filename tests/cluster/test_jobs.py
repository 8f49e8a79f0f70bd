"""What a task carries: the driver's engine settings, merged with the node's own."""

from __future__ import annotations

from mergepkg.cluster.jobs import Engine
from mergepkg.settings import Settings


def test_the_drivers_offline_makes_the_node_offline_and_a_nodes_own_stays(monkeypatch, tmp_path):
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("MERGEPKG_OFFLINE", raising=False)
    engine = Engine.of(Settings(offline=True, device="cuda", threads=2))
    assert engine.offline
    monkeypatch.setenv("MERGEPKG_HOME", str(tmp_path / "node"))  # the node's environment
    on_node = engine.settings()
    assert on_node.offline and on_node.device == "cuda" and on_node.threads == 2
    assert on_node.home == tmp_path / "node"
    assert not Engine.of(Settings(offline=False)).settings().offline
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # the node's own
    assert Engine.of(Settings(offline=False)).settings().offline
