"""Flags and MODELCACHE_* variables become one frozen AgentSettings; bad input says what to fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcache.agent.settings import settings_from
from modelcache.contract.errors import UsageError

REQUIRED = ["--coordinator", "http://c:8080/", "--node-name", "n1", "--cache-root", "/cache"]


def test_flags_win_over_the_environment_which_wins_over_defaults() -> None:
    env = {
        "MODELCACHE_MAX_PARALLEL_PULLS": "4",
        "MODELCACHE_MAX_BANDWIDTH": "100Mi/s",
        "MODELCACHE_DELETION_GRACE": "5",
        "HF_ENDPOINT": "http://origin:1/",
    }
    settings, verbose = settings_from([*REQUIRED, "--max-parallel-pulls", "3", "-v"], env)
    assert settings.coordinator == "http://c:8080"
    assert settings.max_parallel_pulls == 3
    assert settings.max_bandwidth == 100 << 20
    assert settings.deletion_grace == 5.0
    assert settings.cache_root == Path("/cache")
    assert settings.credentials.hf_endpoint == "http://origin:1"
    assert settings.heartbeat_interval is None  # the coordinator's answer decides
    assert verbose


def test_node_name_from_the_downward_api_and_group_from_the_node_in_a_pod() -> None:
    env = {
        "MODELCACHE_COORDINATOR": "http://c",
        "MODELCACHE_CACHE_ROOT": "/mnt/models",
        "NODE_NAME": "gpu-a100-7",
        "KUBERNETES_SERVICE_HOST": "10.0.0.1",
        "KUBERNETES_SERVICE_PORT": "443",
    }
    settings, _ = settings_from([], env)
    assert settings.node_name == "gpu-a100-7"
    assert settings.node_group is None
    assert settings.kube is not None
    assert settings.kube.api_url == "https://10.0.0.1:443"


def test_an_explicit_group_needs_no_api_server() -> None:
    settings, _ = settings_from(
        [*REQUIRED, "--node-group", "h100"], {"KUBERNETES_SERVICE_HOST": "x"}
    )
    assert settings.node_group == "h100"
    assert settings.kube is None


@pytest.mark.parametrize(
    ("args", "complaint"),
    [
        (["--node-name", "n", "--cache-root", "/c"], "--coordinator is required"),
        (["--coordinator", "http://c", "--cache-root", "/c"], "--node-name is required"),
        (["--coordinator", "http://c", "--node-name", "n"], "--cache-root is required"),
        ([*REQUIRED, "--listen", "9090"], "HOST:PORT"),
        ([*REQUIRED, "--max-bandwidth", "fast"], "--max-bandwidth"),
        ([*REQUIRED, "--max-parallel-pulls", "0"], "at least 1"),
        ([*REQUIRED, "--node-group", "not a group!"], "--node-group"),
        ([*REQUIRED, "--deletion-grace", "-1"], "must not be negative"),
        ([*REQUIRED, "--peer-upload-slots", "0"], "--peer-upload-slots must be at least 1"),
        ([*REQUIRED, "--peer-upload-bandwidth", "1Ki"], "at least 64Ki"),
        ([*REQUIRED, "--peer-upload-bandwidth", "fast"], "--peer-upload-bandwidth"),
        ([*REQUIRED, "--advertise-url", "10.0.0.5:9090"], "http\\(s\\) base URL"),
        ([*REQUIRED, "--advertise-url", "http://"], "http\\(s\\) base URL"),
    ],
)
def test_bad_flags_are_refused_with_the_remedy(args: list[str], complaint: str) -> None:
    with pytest.raises(UsageError, match=complaint):
        settings_from(args, {})


def test_the_token_file_from_a_flag_or_the_environment(tmp_path: Path) -> None:
    settings, _ = settings_from([*REQUIRED, "--token-file", "/run/token"], {})
    assert settings.token_file == Path("/run/token")
    settings, _ = settings_from(REQUIRED, {"MODELCACHE_TOKEN_FILE": "/etc/modelcache/token"})
    assert settings.token_file == Path("/etc/modelcache/token")


def test_without_a_token_file_none_is_sent_outside_a_pod(monkeypatch: pytest.MonkeyPatch) -> None:
    from modelcache.agent import settings as module

    monkeypatch.setattr(module, "DEFAULT_TOKEN_FILE", Path("/nonexistent/modelcache-token"))
    settings, _ = settings_from(REQUIRED, {})
    assert settings.token_file is None


def test_peer_flags_and_their_environment_variables() -> None:
    settings, _ = settings_from(REQUIRED, {})
    assert settings.peer_upload_slots == 8
    assert settings.peer_upload_bandwidth is None
    env = {
        "MODELCACHE_PEER_UPLOAD_BANDWIDTH": "200Mi/s",
        "MODELCACHE_PEER_UPLOAD_SLOTS": "3",
        "MODELCACHE_ADVERTISE_URL": "http://10.0.3.7:9090/",
    }
    settings, _ = settings_from(REQUIRED, env)
    assert settings.peer_upload_bandwidth == 200 << 20
    assert settings.peer_upload_slots == 3
    assert settings.advertised_url == "http://10.0.3.7:9090"
    settings, _ = settings_from([*REQUIRED, "--peer-upload-slots", "16"], env)
    assert settings.peer_upload_slots == 16


def test_the_advertised_url_without_the_flag() -> None:
    settings, _ = settings_from(REQUIRED, {})
    assert settings.advertised_url == "http://n1:9090", "0.0.0.0: the node's name"
    settings, _ = settings_from([*REQUIRED, "--listen", "10.1.2.3:8000"], {})
    assert settings.advertised_url == "http://10.1.2.3:8000"
