"""Unexpected exceptions: 500 internal_error, and a log line with the traceback, every secret and token masked."""

from __future__ import annotations

import base64
import io
import json
import logging
from collections.abc import Callable, Iterator
from typing import Any, NoReturn

import pytest

import function_app
from emulator import CLIENT_ID, REPORT_ID, FakeUpstream
from shared import redact
from shared.entra import EntraTokenProvider
from shared.http import HttpClient
from shared.settings import Settings
from tests.conftest import PASSWORD, REDIS_PASSWORD, SECRET, FakeClock
from tests.redis_server import RedisServer

REPORT = f"/api/embed/reports/{REPORT_ID}"
CACHE_KEY = base64.b64encode(bytes(range(7, 39))).decode()


@pytest.fixture
def handler_output() -> Iterator[io.StringIO]:
    """A real handler on the root logger, added after the app installed its filter (as the worker's may be)."""
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.addHandler(handler)
    level = root.level
    root.setLevel(logging.DEBUG)
    yield out
    root.removeHandler(handler)
    root.setLevel(level)


class Exploding:
    """A service whose every request fails with a bug that holds every secret, in its message and its locals."""

    def __init__(self, settings: Settings, secrets: list[str]) -> None:
        self.settings = settings
        self.secrets = secrets

    def customer_for(self, headers: Any) -> None:
        return None  # one global scope, as the settings say

    def embed(self, *args: Any, **kwargs: Any) -> NoReturn:
        held = " | ".join(self.secrets)  # a local holding them, as a careless debug line would
        raise RuntimeError(f"bug while holding {held}")


def test_an_unexpected_exception_is_logged_with_a_redacted_traceback(
    call: Callable[..., Any],
    fake: FakeUpstream,
    env: dict[str, str],
    clock: FakeClock,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    handler_output: io.StringIO,
) -> None:
    # A real sign-in and GenerateToken: MSAL's access and refresh tokens and an embed token, all registered.
    first = call(REPORT)
    assert first.status_code == 200
    embed_token = json.loads(first.get_body())["accessToken"]
    access_token = next(iter(fake.access_tokens))
    refresh_token = next(iter(fake.refresh_tokens))
    # The other secrets a worker may hold: a certificate's private key, and IDENTITY_HEADER.
    certificate = fake.add_client_certificate(CLIENT_ID)
    base = {k: env[k] for k in ("POWERBI_TENANT_ID", "POWERBI_CLIENT_ID", "POWERBI_WORKSPACE_ID")}
    with_certificate = {**base, "POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_CLIENT_CERTIFICATE": certificate.pem}
    EntraTokenProvider(Settings.from_env(with_certificate), HttpClient(clock=clock), clock)
    monkeypatch.setenv("IDENTITY_HEADER", fake.identity_header)
    # The platform's variable reaches the settings with the rest of the environment.
    managed = {**base, "POWERBI_AUTH_MODE": "ManagedIdentity", "IDENTITY_HEADER": fake.identity_header}
    EntraTokenProvider(Settings.from_env(managed), HttpClient(clock=clock), clock)
    key_line = certificate.key_pem.splitlines()[3]
    secrets = [SECRET, PASSWORD, certificate.key_pem, key_line, fake.identity_header]
    secrets += [access_token, refresh_token, embed_token, embed_token[:60]]  # a token cut short, too
    settings = function_app.service().settings
    function_app.use_service(Exploding(settings, secrets))  # type: ignore[arg-type]

    with caplog.at_level(logging.DEBUG):
        response = call(REPORT)

    body = json.loads(response.get_body())
    assert (response.status_code, body["error"]["code"]) == (500, "internal_error")
    assert body["error"]["message"] == "The function failed unexpectedly."
    logged = [caplog.text, handler_output.getvalue(), *(r.getMessage() for r in caplog.records)]
    for text in logged:
        for secret in secrets:
            assert secret not in text
    assert "RuntimeError: bug while holding [redacted]" in handler_output.getvalue()
    assert "Traceback (most recent call last)" in handler_output.getvalue()
    line = next(r for r in caplog.records if "internal_error" in r.getMessage())
    assert f"requestId={body['error']['requestId']}" in line.getMessage()
    assert line.exc_info is None and line.exc_text and "[redacted]" in line.exc_text
    for secret in secrets:
        assert secret not in response.get_body().decode()


def test_records_of_any_logger_are_redacted_whatever_handler_emits_them() -> None:
    token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.payload-Zq81xv7.signature-Kp42"
    redact.register_secret(token)
    out = io.StringIO()
    child = logging.getLogger("some.library.deep.down")  # a child logger, its own handler
    handler = logging.StreamHandler(out)
    child.addHandler(handler)
    try:
        child.warning("calling with Authorization: Bearer %s", token)
        child.warning("a piece of it: %s...", token[:40])
        try:
            raise ValueError(f"refused {token}")
        except ValueError:
            child.exception("failed")
    finally:
        child.removeHandler(handler)

    text = out.getvalue()
    assert "Bearer [redacted]" in text
    assert "a piece of it: [redacted]..." in text
    assert "ValueError: refused [redacted]" in text
    assert "payload-Zq81xv7" not in text


def test_lasting_secrets_with_spaces_and_lines() -> None:
    redact.register_secret("correct horse battery Zq81", lasting=True)
    pem = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7\n-----END PRIVATE KEY-----"
    redact.register_secret(pem, lasting=True)

    assert redact.redact("password=correct horse battery Zq81;") == "password=[redacted];"
    assert "MIIEvQIBADANBgkq" not in redact.redact(f"key: {pem}")
    assert "MIIEvQIBADANBgkq" not in redact.redact("line MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7 end")
    assert redact.redact("nothing secret here, ids 5b218778-e7a5-4d73-8187-f10824047715") == (
        "nothing secret here, ids 5b218778-e7a5-4d73-8187-f10824047715"
    )


def test_the_token_registry_is_bounded() -> None:
    redact.forget_all()
    first = "first-token-" + "a" * 40
    redact.register_secret(first)
    for n in range(redact.capacity()):
        redact.register_secret(f"token-{n:06d}-" + "b" * 40)

    assert len(redact._tokens) == redact.capacity() == redact.MIN_TOKENS
    assert first in redact.redact(first)  # the oldest was forgotten
    assert redact.redact(f"token-{redact.capacity() - 1:06d}-" + "b" * 40) == redact.MASK


# --- issue 17 §5: the registry and the shared cache ------------------------------------------------------


def test_the_registry_holds_at_least_as_many_tokens_as_the_token_cache(
    env: dict[str, str], make_service: Callable[[dict[str, str]], Any]
) -> None:
    redact.forget_all()
    make_service({**env, "POWERBI_CACHE_MAX_TOKENS": "20000"})
    first = "first-token-" + "a" * 40
    redact.register_secret(first)
    for n in range(20_000 - 1):  # a full token cache: the first token is still one of them
        redact.register_secret(f"token-{n:06d}-" + "b" * 40)

    assert redact.capacity() >= 20_000 > redact.MIN_TOKENS
    assert redact.redact(first) == redact.MASK


def shared_env(env: dict[str, str], url: str) -> dict[str, str]:
    return {**env, "POWERBI_CACHE_URL": url, "POWERBI_CACHE_ENCRYPTION_KEY": CACHE_KEY}


def test_an_embed_token_read_from_the_shared_cache_is_redacted(
    env: dict[str, str], make_service: Callable[[dict[str, str]], Any], redis_server: RedisServer
) -> None:
    one = make_service(shared_env(env, redis_server.url))
    minted = one.embed("report", REPORT_ID).token.token
    redact.forget_all()  # another instance: it has never seen the token
    two = make_service(shared_env(env, redis_server.url))

    served = two.embed("report", REPORT_ID).token.token

    assert served == minted  # from Redis, not minted again
    assert redact.redact(f"token={served}") == f"token={redact.MASK}"


def test_the_redis_password_and_the_cache_key_are_secrets(
    env: dict[str, str], make_service: Callable[[dict[str, str]], Any], redis_server: RedisServer
) -> None:
    redact.forget_all()
    make_service(shared_env(env, redis_server.url))

    line = f"redis {redis_server.url} password {REDIS_PASSWORD} key {CACHE_KEY}"
    assert REDIS_PASSWORD not in redact.redact(line)
    assert CACHE_KEY not in redact.redact(line)
