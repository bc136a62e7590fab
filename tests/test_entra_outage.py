"""Entra ID down or throttling is never a 500 nor a sign-in refusal: 503 signin_unavailable with Retry-After.

Real MSAL against the emulator: a 5xx (MSAL raises MsalServiceError, then replays it for a few seconds
without calling out), a 429 (MSAL hands back a dict), the managed identity endpoint failing, Entra's
discovery document failing, connection failures; and malformed Retry-After headers from Entra and Power BI.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Callable
from typing import Any

import pytest

from emulator import REPORT_ID, FakeUpstream
from emulator.entra import DISCOVERY_PATH, entra_unavailable
from shared.errors import ConfigurationError, SignInFailed, SignInUnavailable
from shared.http import HttpClient
from shared.settings import Settings
from tests.conftest import FakeClock

REPORT = f"/api/embed/reports/{REPORT_ID}"
ATTEMPTS = 4  # the first try and the HTTP client's 3 retries


def answer(response: Any) -> tuple[int, str, str | None]:
    body = json.loads(response.get_body())
    return response.status_code, body["error"]["code"], response.headers.get("Retry-After")


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_a_5xx_from_the_token_endpoint_is_503_signin_unavailable(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, status: int
) -> None:
    entra_unavailable(fake, status=status, times=ATTEMPTS)

    first = call(REPORT)
    replayed = call(REPORT)  # MSAL replays the failure for 5 s without calling out

    assert answer(first) == (503, "signin_unavailable", "5")
    assert answer(replayed) == (503, "signin_unavailable", "5")
    assert len(fake.token_calls) == ATTEMPTS  # bounded retries, then MSAL's replay made no call
    assert not fake.calls(path_contains="/v1.0/")


def test_entras_own_retry_after_is_passed_on(call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock) -> None:
    entra_unavailable(fake, status=503, retry_after="7", times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (503, "signin_unavailable", "7")
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"  # readable by a CORS page
    # 7 s waits inside a 20 s deadline: three attempts, then the answer instead of a third wait.
    assert clock.sleeps == [7.0, 7.0]
    assert len(fake.token_calls) == 3


@pytest.mark.parametrize("retry_after", [None, "3"])
def test_a_429_from_entra_is_not_a_sign_in_refusal(
    call: Callable[..., Any], fake: FakeUpstream, retry_after: str | None
) -> None:
    entra_unavailable(fake, status=429, retry_after=retry_after, times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (503, "signin_unavailable", retry_after or "5")


@pytest.mark.parametrize("malformed", ["1.5", "soon", "Wed, 32 Foo 2026 99:99:99 GMT"])
def test_a_malformed_retry_after_from_entra_counts_as_absent(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, malformed: str
) -> None:
    entra_unavailable(fake, status=503, retry_after=malformed, times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (503, "signin_unavailable", "5")
    assert len(fake.token_calls) == ATTEMPTS
    assert clock.sleeps and all(s <= 8 for s in clock.sleeps)  # urllib3's back-off applied, no error


@pytest.mark.parametrize("malformed", ["1.5", "soon", "Wed, 32 Foo 2026 99:99:99 GMT"])
def test_a_malformed_retry_after_from_power_bi_counts_as_absent(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, malformed: str
) -> None:
    fake.fault("POST", "GenerateToken", status=429, headers={"Retry-After": malformed}, times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (429, "throttled", "30")  # Power BI's own default wait
    assert len(fake.calls("POST", "GenerateToken")) == ATTEMPTS


def test_discovery_unavailable_is_503(call: Callable[..., Any], fake: FakeUpstream) -> None:
    entra_unavailable(fake, status=503, times=ATTEMPTS, path=DISCOVERY_PATH)

    assert answer(call(REPORT)) == (503, "signin_unavailable", "5")
    assert fake.token_calls == []


def test_entra_unreachable_is_503(call: Callable[..., Any], env: dict[str, str], clock: FakeClock) -> None:
    env["POWERBI_AUTHORITY_HOST"] = f"https://localhost:{closed_port()}"

    assert answer(call(REPORT)) == (503, "signin_unavailable", "5")
    assert clock.sleeps  # connection failures are retried too


def test_the_token_endpoint_unreachable_after_discovery_is_503(fake: FakeUpstream, clock: FakeClock) -> None:
    """Discovery answered, then Entra went away: MSAL lets our client's UpstreamUnreachable through."""
    from shared.entra import EntraTokenProvider

    with FakeUpstream(ca=fake.ca) as entra:
        entra.clients.update(fake.clients)
        settings = Settings.from_env(
            {
                "POWERBI_AUTH_MODE": "ServicePrincipal",
                "POWERBI_TENANT_ID": entra.tenant_guid,
                "POWERBI_CLIENT_ID": next(c for c, s in fake.clients.items() if s),
                "POWERBI_CLIENT_SECRET": next(s for s in fake.clients.values() if s),
                "POWERBI_AUTHORITY_HOST": entra.base_url,
                "POWERBI_API_URL": fake.base_url,
                "POWERBI_WORKSPACE_ID": "f089354e-8366-4e18-aea3-4cb4a3a50b48",
            }
        )
        tokens = EntraTokenProvider(settings, HttpClient(clock=clock), clock)
        assert tokens.token(0).value
    # The emulator has stopped: the next sign-in cannot connect.
    with pytest.raises(SignInUnavailable) as raised:
        tokens.token(0, fresh=True)

    assert (raised.value.status, raised.value.headers) == (503, {"Retry-After": "5"})
    assert "unreachable" in raised.value.cause


@pytest.mark.parametrize("status", [500, 503, 429])
def test_the_managed_identity_endpoint_failing_is_503(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, status: int
) -> None:
    for name, value in fake.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    env["POWERBI_AUTH_MODE"] = "ManagedIdentity"
    entra_unavailable(fake, status=status, retry_after="4", times=ATTEMPTS, path="/msi/token")

    assert answer(call(REPORT)) == (503, "signin_unavailable", "4")


def test_the_managed_identity_endpoint_unreachable_is_503(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("IDENTITY_ENDPOINT", f"http://127.0.0.1:{closed_port()}/msi/token")
    monkeypatch.setenv("IDENTITY_HEADER", fake.identity_header)
    env["POWERBI_AUTH_MODE"] = "ManagedIdentity"

    assert answer(call(REPORT)) == (503, "signin_unavailable", "5")


def test_a_refusal_is_still_sign_in_failed(call: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.fail_sign_in.append(50126)

    status, code, retry_after = answer(call(REPORT))

    assert (status, code, retry_after) == (502, "sign_in_failed", None)


# --- MSAL's ValueErrors: only an unreadable OpenID configuration points at the authority and tenant -----------


def test_an_unreadable_openid_configuration_names_the_authority_and_tenant(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    fake.fault("GET", DISCOVERY_PATH, status=404, body={"error": "not_found"})

    response = call(REPORT)

    assert answer(response)[:2] == (502, "sign_in_failed")
    assert "check POWERBI_AUTHORITY_HOST and POWERBI_TENANT_ID" in json.loads(response.get_body())["error"]["message"]


def test_a_certificate_msal_cannot_use_has_its_own_message(
    fake: FakeUpstream, clock: FakeClock, env: dict[str, str]
) -> None:
    from shared.entra import EntraTokenProvider

    certificate = fake.add_client_certificate(next(c for c, s in fake.clients.items() if s))
    broken_key = "-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5IGF0IGFsbA==\n-----END PRIVATE KEY-----\n"
    settings = Settings.from_env(
        {
            **{k: v for k, v in env.items() if k not in ("POWERBI_CLIENT_SECRET", "POWERBI_USERNAME")},
            "POWERBI_AUTH_MODE": "ServicePrincipal",
            "POWERBI_PASSWORD": "",
            "POWERBI_CLIENT_CERTIFICATE": broken_key + certificate.cert_pem,
        }
    )
    tokens = EntraTokenProvider(settings, HttpClient(clock=clock), clock)

    with pytest.raises((ConfigurationError, SignInFailed)) as raised:
        tokens.token(0)

    assert isinstance(raised.value, ConfigurationError)
    assert "POWERBI_CLIENT_CERTIFICATE" in raised.value.message
    assert "POWERBI_AUTHORITY_HOST" not in raised.value.message
