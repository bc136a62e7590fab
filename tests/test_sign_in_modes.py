"""Sign-in modes and clouds: service principal with a certificate, managed identity, profiles, sovereign clouds."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import trustme

from emulator import (
    CLIENT_ID,
    DASHBOARD_ID,
    MANAGED_IDENTITY_CLIENT_ID,
    REPORT_ID,
    TENANT_ID,
    USER_ASSIGNED_CLIENT_ID,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator.entra import emulator_session
from shared.errors import ConfigurationError, SignInUnavailable
from shared.settings import Settings
from tests.conftest import FakeClock

REPORT = f"/api/embed/reports/{REPORT_ID}"
DASHBOARD = f"/api/embed/dashboards/{DASHBOARD_ID}"
PROFILE_ID = "1f2e3d4c-5b6a-4978-8695-a4b3c2d1e0f9"
BASE = {"POWERBI_CLIENT_ID": CLIENT_ID, "POWERBI_WORKSPACE_ID": "f089354e-8366-4e18-aea3-4cb4a3a50b48"}
SERVICE_PRINCIPAL = {**BASE, "POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_TENANT_ID": TENANT_ID}


@pytest.mark.parametrize(
    ("cloud", "authority", "api", "scope"),
    [
        (
            "Public",
            "https://login.microsoftonline.com",
            "https://api.powerbi.com",
            "https://analysis.windows.net/powerbi/api/.default",
        ),
        (
            "USGov",
            "https://login.microsoftonline.com",
            "https://api.powerbigov.us",
            "https://analysis.usgovcloudapi.net/powerbi/api/.default",
        ),
        (
            "USGovHigh",
            "https://login.microsoftonline.us",
            "https://api.high.powerbigov.us",
            "https://high.analysis.usgovcloudapi.net/powerbi/api/.default",
        ),
        (
            "USGovDoD",
            "https://login.microsoftonline.us",
            "https://api.mil.powerbigov.us",
            "https://mil.analysis.usgovcloudapi.net/powerbi/api/.default",
        ),
        (
            "China",
            "https://login.chinacloudapi.cn",
            "https://api.powerbi.cn",
            "https://analysis.chinacloudapi.cn/powerbi/api/.default",
        ),
    ],
)
def test_cloud_presets(cloud: str, authority: str, api: str, scope: str) -> None:
    s = Settings.from_env({**SERVICE_PRINCIPAL, "POWERBI_CLIENT_SECRET": "x", "POWERBI_CLOUD": cloud})

    assert (s.sign_in.authority, s.powerbi.api_url, s.powerbi.scope) == (f"{authority}/{TENANT_ID}", api, scope)


def test_explicit_hosts_override_the_cloud() -> None:
    s = Settings.from_env(
        {
            **SERVICE_PRINCIPAL,
            "POWERBI_CLIENT_SECRET": "x",
            "POWERBI_CLOUD": "China",
            "POWERBI_AUTHORITY_HOST": "https://login.example.test",
            "POWERBI_API_URL": "https://api.example.test",
            "POWERBI_SCOPE": "https://example.test/powerbi/api/.default",
        }
    )

    assert (s.sign_in.authority_host, s.powerbi.api_url, s.powerbi.resource) == (
        "https://login.example.test",
        "https://api.example.test",
        "https://example.test/powerbi/api",
    )


def test_an_unknown_cloud_is_named() -> None:
    with pytest.raises(ConfigurationError, match="POWERBI_CLOUD must be one of Public, USGov, USGovHigh"):
        Settings.from_env({**SERVICE_PRINCIPAL, "POWERBI_CLIENT_SECRET": "x", "POWERBI_CLOUD": "Mars"})


# --- certificates -------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate_pem() -> str:
    """A client certificate with its private key, as a PEM (the shape Key Vault gives for content type PEM)."""
    leaf = trustme.CA().issue_cert("embed-function.contoso.test")
    return leaf.private_key_pem.bytes().decode() + leaf.cert_chain_pems[0].bytes().decode()


def test_certificate_from_a_file_or_from_the_setting(certificate_pem: str, tmp_path: Path) -> None:
    path = tmp_path / "client.pem"
    path.write_text(certificate_pem)

    from_file = Settings.from_env({**SERVICE_PRINCIPAL, "POWERBI_CLIENT_CERTIFICATE_PATH": str(path)})
    one_line = certificate_pem.replace("\n", "\\n")
    from_setting = Settings.from_env({**SERVICE_PRINCIPAL, "POWERBI_CLIENT_CERTIFICATE": one_line})

    assert from_file.sign_in.client_certificate == from_setting.sign_in.client_certificate
    assert from_file.sign_in.client_certificate is not None
    assert "PRIVATE KEY" in from_file.sign_in.client_certificate.private_key
    assert from_file.sign_in.client_type == "confidential"
    assert "PRIVATE KEY" not in repr(from_file)


@pytest.mark.parametrize(
    ("extra", "problem"),
    [
        ({"POWERBI_CLIENT_CERTIFICATE": "-----BEGIN CERTIFICATE-----\nabc\n"}, "must be a PEM holding"),
        ({"POWERBI_CLIENT_CERTIFICATE_PATH": "/nonexistent/client.pem"}, "names a file that cannot be read"),
        ({}, "POWERBI_CLIENT_SECRET, POWERBI_CLIENT_CERTIFICATE(_PATH) or POWERBI_CLIENT_ASSERTION is required"),
    ],
)
def test_certificate_problems(extra: dict[str, str], problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({**SERVICE_PRINCIPAL, **extra})

    assert problem in raised.value.message


def test_a_secret_and_a_certificate_together_are_ambiguous(certificate_pem: str) -> None:
    env = {**SERVICE_PRINCIPAL, "POWERBI_CLIENT_SECRET": "s", "POWERBI_CLIENT_CERTIFICATE": certificate_pem}

    with pytest.raises(ConfigurationError, match="set POWERBI_CLIENT_SECRET or a client certificate, not both"):
        Settings.from_env(env)


# --- managed identity and profiles --------------------------------------------------------------------------


def test_managed_identity_needs_no_client_id_tenant_or_secret() -> None:
    s = Settings.from_env(
        {"POWERBI_AUTH_MODE": "ManagedIdentity", "POWERBI_WORKSPACE_ID": BASE["POWERBI_WORKSPACE_ID"]}
    )

    assert (s.sign_in.client_type, s.sign_in.client_secret, s.sign_in.managed_identity_client_id) == (
        "managedIdentity",
        None,
        None,
    )
    assert s.powerbi.resource == "https://analysis.windows.net/powerbi/api"


def test_a_profile_id_goes_with_every_power_bi_call(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    fake.add_profile("Embedding", profile_id=PROFILE_ID, workspaces=[WORKSPACE_ID])
    env.update({"POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_PROFILE_ID": PROFILE_ID})

    assert call(REPORT).status_code == 200
    power_bi = fake.calls(path_contains="/v1.0/")
    assert len(power_bi) == 3  # report, dataset, GenerateToken
    assert {r.headers.get("x-powerbi-profile-id") for r in power_bi} == {PROFILE_ID}
    assert all("x-powerbi-profile-id" not in r.headers for r in fake.token_calls)


# --- against the emulator: certificate and managed identity sign-ins ------------------------------------------


def test_service_principal_with_a_certificate(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    certificate = fake.add_client_certificate(CLIENT_ID)
    del env["POWERBI_CLIENT_SECRET"], env["POWERBI_USERNAME"], env["POWERBI_PASSWORD"]
    env.update({"POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_CLIENT_CERTIFICATE": certificate.pem})

    assert call(REPORT).status_code == 200
    grant = fake.token_calls[0].form
    assert grant["grant_type"] == "client_credentials"
    assert grant["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in grant


def test_an_unregistered_certificate_is_refused_with_its_aadsts_code(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    certificate = fake.add_client_certificate(CLIENT_ID, register=False)
    del env["POWERBI_CLIENT_SECRET"]
    env.update({"POWERBI_AUTH_MODE": "ServicePrincipal", "POWERBI_CLIENT_CERTIFICATE": certificate.pem})

    response = call(REPORT)

    assert response.status_code == 502
    assert "AADSTS700027" in response.get_body().decode()


@pytest.mark.parametrize(
    ("user_assigned", "principal"),
    [(None, MANAGED_IDENTITY_CLIENT_ID), (USER_ASSIGNED_CLIENT_ID, USER_ASSIGNED_CLIENT_ID)],
)
def test_managed_identity(
    call: Callable[..., Any],
    fake: FakeUpstream,
    env: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    user_assigned: str | None,
    principal: str,
) -> None:
    for name, value in fake.managed_identity_env().items():  # what App Service sets for the worker
        monkeypatch.setenv(name, value)
    for name in ("POWERBI_CLIENT_ID", "POWERBI_CLIENT_SECRET", "POWERBI_USERNAME", "POWERBI_PASSWORD"):
        del env[name]
    env["POWERBI_AUTH_MODE"] = "ManagedIdentity"
    if user_assigned:
        env["POWERBI_MANAGED_IDENTITY_CLIENT_ID"] = user_assigned

    assert call(REPORT).status_code == 200
    assert call(DASHBOARD).status_code == 200
    assert fake.token_calls == []
    asked = fake.identity_calls
    assert len(asked) == 1  # the second request's token came from MSAL's cache
    assert asked[0].query["resource"] == "https://analysis.windows.net/powerbi/api"
    assert asked[0].query.get("client_id") == user_assigned
    bearer = fake.calls("POST", "GenerateToken")[0].headers["authorization"].removeprefix("Bearer ")
    assert fake.access_tokens[bearer].principal == principal


def test_managed_identity_that_the_app_does_not_have(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in fake.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    env.update({"POWERBI_AUTH_MODE": "ManagedIdentity", "POWERBI_MANAGED_IDENTITY_CLIENT_ID": PROFILE_ID})

    response = call(REPORT)

    assert response.status_code == 502
    assert "POWERBI_MANAGED_IDENTITY_CLIENT_ID" in response.get_body().decode()
    assert not fake.calls(path_contains="/v1.0/")


# --- the user-realm port: the emulator's business, not the function's ---------------------------------------


def test_production_code_does_not_rewrite_the_user_realm_port(
    fake: FakeUpstream, env: dict[str, str], clock: FakeClock
) -> None:
    """Without the emulator's session, MSAL's port-less user-realm URL goes to port 443, where nothing listens."""
    from shared.embed import EmbedService

    service = EmbedService.create(Settings.from_env(env), clock)  # a plain session, as in Azure

    with pytest.raises(SignInUnavailable) as raised:
        service.tokens.token(0)

    assert "https://localhost/common/userrealm/" in raised.value.cause
    assert fake.token_calls == []


def test_the_emulator_session_routes_the_user_realm_to_the_authority_port(fake: FakeUpstream) -> None:
    session = emulator_session(fake.base_url)

    answer = session.get("https://localhost/common/userrealm/embed.user@contoso.com?api-version=1.0", timeout=10)

    assert answer.json()["account_type"] == "Managed"
    assert fake.calls("GET", "/common/userrealm/")


def test_the_doctor_against_the_emulator(
    fake: FakeUpstream, env: dict[str, str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: Any
) -> None:
    from emulator import doctor as emulator_doctor

    monkeypatch.chdir(tmp_path)  # no local.settings.json: the environment
    for name, value in env.items():
        monkeypatch.setenv(name, value)

    assert emulator_doctor.main([]) == 0
    assert "Result: OK" in capsys.readouterr().out
