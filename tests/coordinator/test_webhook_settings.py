"""`--webhook-*` flags and MODELCACHE_WEBHOOK_* variables."""

from __future__ import annotations

from pathlib import Path

import pytest

from modelcache.contract.errors import UsageError
from modelcache.coordinator.settings import settings_from
from modelcache.coordinator.webhook_settings import (
    DEFAULT_WEBHOOK_CERT,
    DEFAULT_WEBHOOK_KEY,
    WebhookSettings,
)


def test_off_by_default_and_the_mounted_secret_when_listening() -> None:
    assert settings_from(["--store", "kube"], {})[0].webhook is None
    settings, _ = settings_from(["--store", "kube", "--webhook-listen", "0.0.0.0:9443"], {})
    assert settings.webhook == WebhookSettings(
        "0.0.0.0", 9443, DEFAULT_WEBHOOK_CERT, DEFAULT_WEBHOOK_KEY
    )
    assert Path("/etc/modelcache/webhook-tls/tls.crt") == DEFAULT_WEBHOOK_CERT


def test_from_the_environment_and_flags_win() -> None:
    env = {
        "MODELCACHE_STORE": "kube",
        "MODELCACHE_WEBHOOK_LISTEN": ":9443",
        "MODELCACHE_WEBHOOK_CERT": "/env/tls.crt",
        "MODELCACHE_WEBHOOK_KEY": "/env/tls.key",
    }
    settings, _ = settings_from(["--webhook-cert", "/flag/tls.crt"], env)
    assert settings.webhook is not None
    assert (settings.webhook.host, settings.webhook.port) == ("0.0.0.0", 9443)
    assert settings.webhook.cert_file == Path("/flag/tls.crt")
    assert settings.webhook.key_file == Path("/env/tls.key")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--webhook-listen", "0.0.0.0:9443"], "needs --store kube"),
        (["--store", "kube", "--webhook-cert", "x.crt"], "need --webhook-listen"),
        (["--store", "kube", "--webhook-listen", "9443"], "write HOST:PORT"),
    ],
)
def test_refused_combinations_say_what_to_do(args: list[str], message: str) -> None:
    with pytest.raises(UsageError, match=message):
        settings_from(args, {})
