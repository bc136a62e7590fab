"""No secret to rotate: POWERBI_CLIENT_ASSERTION=managed_identity, against the emulator with the real MSAL.

The app registration trusts a user-assigned managed identity (a federated identity credential); the function
signs in as the app (service principal, or a master user's confidential client) with that identity's token for
the token-exchange audience as its client assertion. The settings, the sign-in, what Entra refuses and what the
doctor says about it.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import jwt
import pytest

from emulator import CLIENT_ID, REPORT_ID, TENANT_ID, USER_ASSIGNED_CLIENT_ID, FakeUpstream
from emulator.entra import emulator_session
from emulator.federated import FederatedCredential
from shared import doctor
from shared.errors import ConfigurationError
from shared.settings import Settings
from tests.conftest import SECRET

REPORT = f"/api/embed/reports/{REPORT_ID}"
EXCHANGE = "api://AzureADTokenExchange"
ISSUER = f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"
WORKSPACE = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
FEDERATED = {
    "POWERBI_AUTH_MODE": "ServicePrincipal",
    "POWERBI_TENANT_ID": TENANT_ID,
    "POWERBI_CLIENT_ID": CLIENT_ID,
    "POWERBI_WORKSPACE_ID": WORKSPACE,
    "POWERBI_CLIENT_ASSERTION": "managed_identity",
    "POWERBI_MANAGED_IDENTITY_CLIENT_ID": USER_ASSIGNED_CLIENT_ID,
}


# --- settings -----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cloud", "audience"),
    [
        ("Public", "api://AzureADTokenExchange"),
        ("USGov", "api://AzureADTokenExchange"),  # GCC signs in with commercial Entra ID
        ("USGovHigh", "api://AzureADTokenExchangeUSGov"),
        ("USGovDoD", "api://AzureADTokenExchangeUSGov"),
        ("China", "api://AzureADTokenExchangeChina"),
    ],
)
def test_a_service_principal_needs_no_secret_with_a_managed_identity_assertion(cloud: str, audience: str) -> None:
    sign_in = Settings.from_env({**FEDERATED, "POWERBI_CLOUD": cloud}).sign_in

    assert (sign_in.client_assertion, sign_in.client_type) == ("managed_identity", "confidential")
    assert (sign_in.client_secret, sign_in.client_certificate) == (None, None)
    assert sign_in.federated_audience == audience


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"POWERBI_CLIENT_SECRET": "s3cret-value"}, ("POWERBI_CLIENT_ASSERTION", "POWERBI_CLIENT_SECRET", "not both")),
        (
            {"POWERBI_MANAGED_IDENTITY_CLIENT_ID": ""},
            ("POWERBI_CLIENT_ASSERTION", "POWERBI_MANAGED_IDENTITY_CLIENT_ID"),
        ),
        ({"POWERBI_CLIENT_ASSERTION": "workload_identity"}, ("POWERBI_CLIENT_ASSERTION must be",)),
        ({"POWERBI_CLIENT_ASSERTION": ""}, ("POWERBI_CLIENT_SECRET, POWERBI_CLIENT_CERTIFICATE(_PATH) or ",)),
    ],
)
def test_assertion_settings_that_cannot_work_are_named(change: dict[str, str], named: tuple[str, ...]) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({**FEDERATED, **change})

    for words in named:
        assert words in raised.value.message
    assert "s3cret-value" not in raised.value.message


def test_an_assertion_and_a_certificate_are_ambiguous(tmp_path: Any) -> None:
    import trustme

    pem = trustme.CA().issue_cert("app.contoso.com").private_key_and_cert_chain_pem.bytes().decode()
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({**FEDERATED, "POWERBI_CLIENT_CERTIFICATE": pem})

    assert "set POWERBI_CLIENT_ASSERTION=managed_identity or the client certificate" in raised.value.message


# --- signing in through the function ------------------------------------------------------------------------


@pytest.fixture
def app_service(fake: FakeUpstream, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The function app on App Service with the user-assigned identity; its settings (env) use it to sign in."""
    for name, value in fake.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    del env["POWERBI_CLIENT_SECRET"]
    env.update(
        {"POWERBI_CLIENT_ASSERTION": "managed_identity", "POWERBI_MANAGED_IDENTITY_CLIENT_ID": USER_ASSIGNED_CLIENT_ID}
    )
    return env


def sent_assertions(fake: FakeUpstream) -> list[dict[str, Any]]:
    forms = [call.form for call in fake.token_calls]
    assert all("client_secret" not in form for form in forms)
    return [jwt.decode(form["client_assertion"], options={"verify_signature": False}) for form in forms]


@pytest.mark.parametrize("mode", ["ServicePrincipal", "MasterUser"])
def test_the_function_signs_in_with_the_identitys_token(
    call: Callable[..., Any], fake: FakeUpstream, app_service: dict[str, str], mode: str
) -> None:
    app_service["POWERBI_AUTH_MODE"] = mode
    fake.trust_managed_identity(CLIENT_ID, USER_ASSIGNED_CLIENT_ID)
    del fake.clients[CLIENT_ID]  # the registration has no secret at all

    assert call(REPORT).status_code == 200

    (asked,) = fake.identity_calls
    assert asked.query == {"api-version": "2019-08-01", "resource": EXCHANGE, "client_id": USER_ASSIGNED_CLIENT_ID}
    (claims,) = sent_assertions(fake)
    assert (claims["iss"], claims["sub"], claims["aud"]) == (
        ISSUER,
        fake.principal_id(USER_ASSIGNED_CLIENT_ID),
        EXCHANGE,
    )
    assert fake.token_calls[0].form["grant_type"] == (
        "client_credentials" if mode == "ServicePrincipal" else "password"
    )
    bearer = fake.calls("POST", "GenerateToken")[0].headers["authorization"].removeprefix("Bearer ")
    assert fake.access_tokens[bearer].principal == (CLIENT_ID if mode == "ServicePrincipal" else app_service[
        "POWERBI_USERNAME"])  # fmt: skip


def test_an_untrusted_identity_is_entras_refusal(
    call: Callable[..., Any], fake: FakeUpstream, app_service: dict[str, str]
) -> None:
    app_service["POWERBI_AUTH_MODE"] = "ServicePrincipal"

    response = call(REPORT)

    assert response.status_code == 502
    body = response.get_body().decode()
    assert "AADSTS700211" in body and "federated identity credential" in body
    assert not fake.calls(path_contains="/v1.0/")


def test_an_identity_the_app_does_not_have_is_named(
    call: Callable[..., Any], fake: FakeUpstream, app_service: dict[str, str]
) -> None:
    app_service.update(
        {
            "POWERBI_AUTH_MODE": "ServicePrincipal",
            "POWERBI_MANAGED_IDENTITY_CLIENT_ID": "0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0",
        }
    )

    response = call(REPORT)

    assert response.status_code == 502
    assert "POWERBI_MANAGED_IDENTITY_CLIENT_ID" in response.get_body().decode()
    assert fake.token_calls == []  # no assertion, so no sign-in was attempted


# --- the doctor -----------------------------------------------------------------------------------------------

OTHER_TENANT = "https://login.microsoftonline.com/0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6/v2.0"


@pytest.mark.parametrize(
    ("credential", "code"),
    [
        (None, 700211),  # none at all
        (lambda principal: FederatedCredential(OTHER_TENANT, principal), 700211),
        (lambda principal: FederatedCredential(ISSUER, "6a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d"), 700213),
        (lambda principal: FederatedCredential(ISSUER, principal, ("api://AzureADTokenExchangeUSGov",)), 70021),
    ],
)
def test_the_doctor_says_which_issuer_and_subject_to_trust(
    fake: FakeUpstream, app_service: dict[str, str], credential: Any, code: int
) -> None:
    principal = fake.principal_id(USER_ASSIGNED_CLIENT_ID)
    if credential is not None:
        fake.federated_credentials[CLIENT_ID] = [credential(principal)]
    app_service["POWERBI_AUTH_MODE"] = "ServicePrincipal"
    out = io.StringIO()

    status = doctor.main([], {**app_service, **fake.managed_identity_env()}, out, emulator_session(fake.base_url))

    text = out.getvalue()
    assert status == 1
    assert f"FAIL  Entra ID refused the sign-in (AADSTS{code})" in text
    fix = next(line for line in text.splitlines() if line.strip().startswith("fix: the app registration"))
    assert f"must trust the managed identity: a federated identity credential with issuer {ISSUER}" in fix
    assert f"subject {principal} and audience {EXCHANGE}" in fix
    assert f"az ad app federated-credential create --id {CLIENT_ID}" in fix
    assert SECRET not in text


def test_the_identitys_token_is_reused_for_new_sign_ins_while_valid(
    make_service: Callable[[dict[str, str]], Any], fake: FakeUpstream, app_service: dict[str, str]
) -> None:
    app_service["POWERBI_AUTH_MODE"] = "ServicePrincipal"
    fake.trust_managed_identity(CLIENT_ID, USER_ASSIGNED_CLIENT_ID)
    service = make_service(app_service)

    first = service.tokens.token(0)
    second = service.tokens.token(0, fresh=True)  # Power BI refused the cached token: sign in again

    assert first.value != second.value
    assert len(fake.token_calls) == 2 and len(fake.identity_calls) == 1
    assert len({form["client_assertion"] for form in (c.form for c in fake.token_calls)}) == 1
