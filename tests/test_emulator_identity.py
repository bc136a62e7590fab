"""The emulator's Entra ID: certificates, lasting sign-in failures, unknown tenants, App Service's managed identity
endpoint, and the standalone command; all through the real msal and requests."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import jwt
import msal
import pytest
import requests

from emulator import (
    CLIENT_ID,
    MANAGED_IDENTITY_CLIENT_ID,
    POWERBI_RESOURCE,
    TENANT_ID,
    USER_ASSIGNED_CLIENT_ID,
    USERNAME,
    WORKSPACE_ID,
    ClientCertificate,
    FakeUpstream,
    make_client_certificate,
)
from tests.conftest import PASSWORD
from tests.test_emulator_powerbi import pbi
from tests.test_emulator_smoke import PBI_SCOPE, confidential

ROOT = Path(__file__).resolve().parent.parent


def sign_in(fake: FakeUpstream, credential: Any = None, tenant: str = TENANT_ID) -> dict[str, Any]:
    result: dict[str, Any] = confidential(fake, credential, tenant).acquire_token_for_client([PBI_SCOPE])
    return result


def bearer(result: dict[str, Any]) -> dict[str, str]:
    return {"Authorization": f"Bearer {result['access_token']}"}


# --- certificates -------------------------------------------------------------------------------------------


def test_certificate_sign_in_ps256_and_rs256(fake: FakeUpstream) -> None:
    cert = fake.add_client_certificate(CLIENT_ID)
    modern = sign_in(fake, {"private_key": cert.key_pem, "public_certificate": cert.cert_pem})  # x5t#S256, PS256
    legacy = sign_in(fake, {"private_key": cert.key_pem, "thumbprint": cert.sha1_thumbprint})  # x5t, RS256
    for result in (modern, legacy):
        assert pbi(fake, bearer(result), "/groups").status_code == 200
    sent = [c.form for c in fake.token_calls]
    assert [jwt.get_unverified_header(f["client_assertion"])["alg"] for f in sent] == ["PS256", "RS256"]
    assert all(
        f["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
        and "client_secret" not in f
        for f in sent
    )


def test_unknown_certificate_and_bad_signature_are_aadsts700027(fake: FakeUpstream) -> None:
    registered, stranger = fake.add_client_certificate(CLIENT_ID), make_client_certificate()
    unknown = sign_in(fake, {"private_key": stranger.key_pem, "public_certificate": stranger.cert_pem})
    forged = sign_in(fake, {"private_key": stranger.key_pem, "thumbprint": registered.sha1_thumbprint})
    assert (unknown["error"], unknown["error_codes"]) == ("invalid_client", [700027])
    assert "The key was not found." in unknown["error_description"]
    assert stranger.sha256_thumbprint in unknown["error_description"]
    assert forged["error_codes"] == [700027]
    assert "did not match the expected signature value" in forged["error_description"]


@pytest.fixture(scope="module")
def signer() -> ClientCertificate:
    return make_client_certificate()


@pytest.mark.parametrize(
    ("claims", "code"),
    [
        ({"exp": 1_000_000}, 700024),
        ({"aud": "https://login.microsoftonline.com/other/oauth2/v2.0/token"}, 50013),
        ({"iss": "someone-else", "sub": "someone-else"}, 700021),
    ],
)
def test_assertion_claims_are_checked(
    fake: FakeUpstream, signer: ClientCertificate, claims: dict[str, Any], code: int
) -> None:
    cert, fake.client_certificates[CLIENT_ID] = signer, [signer.cert_pem]
    good = {
        "aud": f"{fake.base_url}/{TENANT_ID}/oauth2/v2.0/token",
        "iss": CLIENT_ID,
        "sub": CLIENT_ID,
        "exp": int(time.time()) + 600,
    }
    x5t = jwt.utils.base64url_encode(bytes.fromhex(cert.sha1_thumbprint)).decode()
    assertion = jwt.encode(good | claims, cert.key_pem, algorithm="RS256", headers={"x5t": x5t})
    valid = jwt.encode(good, cert.key_pem, algorithm="RS256", headers={"x5t": x5t})
    assert "access_token" in sign_in(fake, {"client_assertion": lambda: valid})
    assert sign_in(fake, {"client_assertion": lambda: assertion})["error_codes"] == [code]


# --- scripted Entra failures --------------------------------------------------------------------------------


def test_sign_in_failures_last_per_client_and_per_user(fake: FakeUpstream) -> None:
    fake.sign_in_failures[CLIENT_ID] = 7000222
    for _ in range(2):
        expired = sign_in(fake)
        assert expired["error_codes"] == [7000222] and "are expired" in expired["error_description"]
    fake.reset()
    fake.sign_in_failures[USERNAME] = 50076
    app = confidential(fake)
    for _ in range(2):
        mfa = app.acquire_token_by_username_password(USERNAME, PASSWORD, scopes=[PBI_SCOPE])
        assert mfa["error_codes"] == [50076] and "multi-factor authentication" in mfa["error_description"]
    assert "access_token" in sign_in(fake)  # the app itself still signs in


def test_an_unknown_tenant_is_aadsts90002_once_tenants_are_listed(fake: FakeUpstream) -> None:
    fake.known_tenants = {"contoso.onmicrosoft.com"}
    answer = requests.get(f"{fake.base_url}/fabrikam.onmicrosoft.com/v2.0/.well-known/openid-configuration", timeout=5)
    assert answer.status_code == 400
    assert (answer.json()["error"], answer.json()["error_codes"]) == ("invalid_tenant", [90002])
    with pytest.raises(ValueError, match="Unable to get authority configuration") as raised:
        sign_in(fake, tenant="fabrikam.onmicrosoft.com")
    assert "AADSTS90002: Tenant 'fabrikam.onmicrosoft.com' not found" in str(raised.value.__context__)
    assert "access_token" in sign_in(fake, tenant="contoso.onmicrosoft.com")


# --- managed identity ---------------------------------------------------------------------------------------


@pytest.fixture
def app_service(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """The two variables App Service sets for an app with a managed identity."""
    for name, value in fake.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    return fake


def managed_identity(identity: Any) -> dict[str, Any]:
    client = msal.ManagedIdentityClient(identity, http_client=requests.Session())
    result: dict[str, Any] = client.acquire_token_for_client(resource=POWERBI_RESOURCE)
    return result


def test_managed_identities_through_msal_are_accepted_by_power_bi(app_service: FakeUpstream) -> None:
    fake = app_service
    fake.token_lifetimes[USER_ASSIGNED_CLIENT_ID] = 900
    system = managed_identity(msal.SystemAssignedManagedIdentity())
    user = managed_identity(msal.UserAssignedManagedIdentity(client_id=USER_ASSIGNED_CLIENT_ID))
    assert system["expires_in"] > 3000 and 800 < user["expires_in"] <= 900  # from expires_on, as MSAL reads it
    assert [fake.access_tokens[r["access_token"]].principal for r in (system, user)] == [
        MANAGED_IDENTITY_CLIENT_ID,
        USER_ASSIGNED_CLIENT_ID,
    ]
    first, second = fake.identity_calls
    assert first.headers["x-identity-header"] == fake.identity_header
    assert first.query == {"api-version": "2019-08-01", "resource": POWERBI_RESOURCE}
    assert second.query["client_id"] == USER_ASSIGNED_CLIENT_ID
    assert pbi(fake, bearer(system), f"/groups/{WORKSPACE_ID}/reports").status_code == 200
    fake.set_member(WORKSPACE_ID, USER_ASSIGNED_CLIENT_ID, None)  # membership rules apply to identities too
    assert pbi(fake, bearer(user), f"/groups/{WORKSPACE_ID}/reports").status_code == 401


def test_managed_identity_refusals(app_service: FakeUpstream) -> None:
    fake = app_service
    unknown = managed_identity(msal.UserAssignedManagedIdentity(client_id="11111111-2222-4333-8444-555555555555"))
    assert unknown["error_description"] == "400, Unable to load the proper Managed Identity."
    query = {"resource": POWERBI_RESOURCE, "api-version": "2019-08-01"}
    wrong = requests.get(fake.managed_identity_endpoint, params=query, headers={"X-IDENTITY-HEADER": "x"}, timeout=5)
    assert (wrong.status_code, wrong.json()["statusCode"]) == (401, 401)
    fake.system_assigned_identity = None
    assert "400" in managed_identity(msal.SystemAssignedManagedIdentity())["error_description"]


# --- standalone ---------------------------------------------------------------------------------------------


def test_standalone_with_a_config_file_stops_on_sigterm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    config = {"users": {"ops@contoso.com": "pw"}, "sign_in_failures": {"blocked@contoso.com": 53003}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    ca = tmp_path / "ca.pem"
    command = [sys.executable, "-m", "emulator.server", "--port", "0", "--ca-pem", str(ca)]
    command += ["--config", str(tmp_path / "config.json")]
    # The command line is the test's own, not input.
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, text=True, env=os.environ)  # noqa: S603
    try:
        assert process.stdout is not None
        banner = [process.stdout.readline() for _ in range(8)]
        base = re.findall(r"https://localhost:\d+", banner[0])[0]
        assert f"tenant id:          {TENANT_ID}" in banner[2] and str(ca) in banner[1]
        assert "IDENTITY_ENDPOINT=http://127.0.0.1:" in banner[5] and banner[-1].startswith("Ctrl-C")
        monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(ca))
        form = {"grant_type": "password", "client_id": "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9", "scope": PBI_SCOPE}
        user = {"username": "ops@contoso.com", "password": "pw"}
        token = requests.post(f"{base}/organizations/oauth2/v2.0/token", data=form | user, timeout=5)
        assert token.status_code == 200, token.text
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=5) == 0
    finally:
        process.kill()
        process.communicate()
