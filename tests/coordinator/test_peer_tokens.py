"""Peer tokens: one per node group, the same from every coordinator that shares the key file (HA
replicas, through the Secret the Deployment mounts), and a clear word when the key is unusable."""

from __future__ import annotations

import hashlib
import hmac
import logging
from pathlib import Path

import pytest

from modelcache.contract.errors import UsageError
from modelcache.coordinator.peer_tokens import PeerTokens, load_peer_key
from modelcache.coordinator.settings import settings_from
from tests.coordinator.conftest import fast_settings, node_group, serving
from tests.manifests.tools import DAEMONSET, render

KEY = "9f1c2b7e4d5a60318e2f9b7c6d5e4f30"


async def _token(settings_db: Path, key_file: Path | None, node: str, group: str) -> str | None:
    async with serving(fast_settings(settings_db, peer_key_file=key_file)) as api:
        await api.put(node_group(group, "10Gi"))
        await api.register(node, group)
        token: str | None = (await api.desired(node)).get("peerToken")
        return token


async def test_coordinators_sharing_the_key_file_hand_out_the_same_tokens(tmp_path: Path) -> None:
    key_file = tmp_path / "key"
    key_file.write_text(KEY + "\n")  # as `kubectl create secret --from-file` may leave it
    first = await _token(tmp_path / "one.db", key_file, "a0", "a100")
    second = await _token(tmp_path / "two.db", key_file, "a1", "a100")
    assert first == second
    message = b"modelcache-peer:a100"
    assert first == hmac.new(KEY.encode(), message, hashlib.sha256).hexdigest()
    other_group = await _token(tmp_path / "three.db", key_file, "h0", "h100")
    assert other_group not in (None, first)


async def test_without_a_key_file_each_coordinator_has_its_own_tokens(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO, logger="modelcache.coordinator.peer_tokens"):
        first = await _token(tmp_path / "one.db", None, "a0", "a100")
        second = await _token(tmp_path / "two.db", None, "a0", "a100")
    assert first is not None
    assert second is not None
    assert first != second
    assert "HA replicas hand out different ones" in caplog.text


def test_tokens_differ_by_group_and_none_without_one() -> None:
    tokens = PeerTokens(KEY.encode())
    assert tokens.for_group("a100") == tokens.for_group("a100") != tokens.for_group("h100")
    assert tokens.for_group(None) is None
    assert KEY not in repr(tokens)


def test_the_key_file_flag_and_variable(tmp_path: Path) -> None:
    flag, _ = settings_from(["--peer-key-file", str(tmp_path / "k")], {})
    assert flag.peer_key_file == tmp_path / "k"
    env, _ = settings_from([], {"MODELCACHE_PEER_KEY_FILE": "/etc/modelcache/peer-key/key"})
    assert env.peer_key_file == Path("/etc/modelcache/peer-key/key")
    assert settings_from([], {})[0].peer_key_file is None


def test_a_missing_secret_falls_back_to_a_random_key_and_says_how_to_share_one(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="modelcache.coordinator.peer_tokens"):
        key = load_peer_key(tmp_path / "absent")
    assert len(key) == 32
    assert load_peer_key(tmp_path / "absent") != key
    assert "kubectl create secret generic modelcache-peer-key" in caplog.text


def test_a_key_too_short_to_be_secret_stops_the_start(tmp_path: Path) -> None:
    short = tmp_path / "key"
    short.write_text("  secret \n")
    with pytest.raises(UsageError, match=r"--peer-key-file .*key is 6 bytes, fewer than 16"):
        load_peer_key(short)
    assert load_peer_key(tmp_path.joinpath("long")) != b""  # absent: random
    (tmp_path / "long").write_text(KEY)
    assert load_peer_key(tmp_path / "long") == KEY.encode()


def test_the_deployment_gives_both_replicas_the_key_from_an_optional_secret() -> None:
    (deployment,) = [
        d
        for d in render(DAEMONSET)
        if d["kind"] == "Deployment" and d["metadata"]["name"] == "modelcache-coordinator"
    ]
    pod = deployment["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    env = {e["name"]: e.get("value") for e in container["env"]}
    key_file = Path(env["MODELCACHE_PEER_KEY_FILE"])
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(key_file.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert volume["secret"]["secretName"] == "modelcache-peer-key"
    assert volume["secret"]["optional"] is True  # the coordinator starts without it
    assert key_file.name == "key"  # the Secret's key in the README's kubectl command
    assert deployment["spec"]["replicas"] == 2
