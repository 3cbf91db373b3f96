"""A new user's first hour (issue 12): configuration fails fast, with the reason.

Each test here failed on the main of 2026-12-05.
"""

from __future__ import annotations

import os

import pytest

from oauth2_broker_mw import Broker, ConfigurationError
from oauth2_broker_mw.testing.mock_provider import MockProvider


@pytest.fixture
def mp() -> MockProvider:
    provider = MockProvider()
    yield provider  # type: ignore[misc]
    provider.close()


# -- item 1: a forgotten client secret shows when the Broker is built ----------------------
@pytest.mark.parametrize("method", ["client_secret_basic", "client_secret_post"])
@pytest.mark.parametrize("secret", [None, "", "   "])
def test_a_missing_or_empty_secret_is_refused_at_build_time(
    mp: MockProvider, method: str, secret: str | None
) -> None:
    with pytest.raises(ConfigurationError) as caught:
        Broker(
            mp.descriptor(client_auth_method=method),
            client_id="x",
            client_secret=secret,
            http_client=mp.client(),
        )
    message = str(caught.value)
    assert "client_secret" in message and method in message and repr(mp.descriptor().id) in message


def test_a_missing_private_key_is_refused_at_build_time(mp: MockProvider) -> None:
    with pytest.raises(ConfigurationError, match="private_key"):
        Broker(mp.descriptor(client_auth_method="private_key_jwt"), client_id="x")


def test_a_public_client_needs_no_secret(mp: MockProvider) -> None:
    Broker(mp.descriptor(client_auth_method="none"), client_id="spa")


def test_the_message_never_shows_a_secret(mp: MockProvider) -> None:
    broker = Broker(mp.descriptor(), client_id="x", client_secret="s3cr3t-value")
    assert "s3cr3t-value" not in repr(broker)


# -- item 6: errors that say what to do --------------------------------------------------
def _middleware(mp: MockProvider, **options: object) -> object:
    from oauth2_broker_mw.middleware import BrokerMiddleware

    broker = Broker(mp.descriptor(), client_id="test-client", client_secret="test-secret")
    kwargs: dict[str, object] = {
        "brokers": {"mock": broker},
        "secret_key": "Qm9x7Lr2Vt8Zp4Hs1Kw6Nd3Jy5Bc0FgXa",
        "base_url": "https://app.example",
    }
    kwargs.update(options)
    return BrokerMiddleware(lambda *a: None, **kwargs)  # type: ignore[arg-type]


def test_bytes_secret_key_says_use_text_and_how(mp: MockProvider) -> None:
    with pytest.raises(ConfigurationError, match=r"not bytes.*token_urlsafe"):
        _middleware(mp, secret_key=os.urandom(32))


@pytest.mark.parametrize("key", ["a" * 32, "ab" * 20, "changeme" * 5])
def test_low_entropy_secret_keys_are_refused(mp: MockProvider, key: str) -> None:
    with pytest.raises(ConfigurationError, match="placeholder"):
        _middleware(mp, secret_key=key)


def test_a_random_secret_key_is_accepted(mp: MockProvider) -> None:
    import secrets

    _middleware(mp, secret_key=secrets.token_urlsafe(32))
    _middleware(mp, secret_key=secrets.token_hex(16))  # 128 bits as 32 hex characters


def test_brokers_as_a_list_says_it_must_be_a_mapping(mp: MockProvider) -> None:
    broker = Broker(mp.descriptor(), client_id="test-client", client_secret="test-secret")
    with pytest.raises(ConfigurationError, match="brokers must be a mapping"):
        _middleware(mp, brokers=[broker])
