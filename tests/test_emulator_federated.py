"""The emulator's federated identity credentials, driven by the real MSAL: an app registration that trusts a
user-assigned managed identity, whose token for the token-exchange audience is the client assertion.
"""

from __future__ import annotations

import json
import time
from typing import Any

import jwt
import msal
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator import CLIENT_ID, TENANT_ID, USER_ASSIGNED_CLIENT_ID, WORKSPACE_ID, FakeUpstream
from emulator.federated import FederatedCredential
from tests.test_emulator_identity import bearer
from tests.test_emulator_powerbi import pbi
from tests.test_emulator_smoke import PBI_SCOPE, confidential

EXCHANGE = "api://AzureADTokenExchange"
ISSUER = f"https://login.microsoftonline.com/{TENANT_ID}/v2.0"


@pytest.fixture
def app_service(fake: FakeUpstream, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """The function app's environment on App Service: its managed identity endpoint."""
    for name, value in fake.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    return fake


def identity_client(identity: str = USER_ASSIGNED_CLIENT_ID) -> msal.ManagedIdentityClient:
    return msal.ManagedIdentityClient(
        msal.UserAssignedManagedIdentity(client_id=identity), http_client=requests.Session(), token_cache=None
    )


def sign_in_with(fake: FakeUpstream, identity: msal.ManagedIdentityClient, audience: str = EXCHANGE) -> Any:
    """The app CLIENT_ID signs in with the identity's token for ``audience`` as its client assertion."""

    def assertion() -> str:
        result = identity.acquire_token_for_client(resource=audience)
        token: str = result["access_token"]
        return token

    return confidential(fake, {"client_assertion": assertion}).acquire_token_for_client([PBI_SCOPE])


def test_a_trusted_identitys_token_signs_the_app_in_without_a_secret(app_service: FakeUpstream) -> None:
    fake = app_service
    del fake.clients[CLIENT_ID]  # the registration has no secret at all: only the federated credential
    credential = fake.trust_managed_identity(CLIENT_ID, USER_ASSIGNED_CLIENT_ID)
    identity = identity_client()

    first = sign_in_with(fake, identity)
    second = sign_in_with(fake, identity)  # a new MSAL app: a new sign-in, the identity's token from cache

    assert "access_token" in first and "access_token" in second, first
    assert fake.access_tokens[first["access_token"]].principal == CLIENT_ID  # the app, not the identity
    assert pbi(fake, bearer(first), f"/groups/{WORKSPACE_ID}/reports").status_code == 200
    (asked,) = fake.identity_calls  # MSAL cached the identity's token
    assert asked.query == {"api-version": "2019-08-01", "resource": EXCHANGE, "client_id": USER_ASSIGNED_CLIENT_ID}
    sent = fake.token_calls[-1].form
    assert sent["client_assertion_type"] == "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
    assert "client_secret" not in sent
    claims = jwt.decode(sent["client_assertion"], options={"verify_signature": False})
    assert (claims["iss"], claims["sub"], claims["aud"]) == (
        ISSUER,
        fake.principal_id(USER_ASSIGNED_CLIENT_ID),
        EXCHANGE,
    )
    assert credential == FederatedCredential(ISSUER, claims["sub"], (EXCHANGE,))


def refusal(result: dict[str, Any], code: int) -> str:
    assert "access_token" not in result
    assert result["error_codes"] == [code], result
    description: str = result["error_description"]
    assert description.startswith(f"AADSTS{code}: ")
    return description


def test_no_credential_for_the_issuer_is_aadsts700211(app_service: FakeUpstream) -> None:
    other_tenant = "https://login.microsoftonline.com/0d1e2f3a-4b5c-4d6e-8f70-8192a3b4c5d6/v2.0"
    subject = app_service.principal_id(USER_ASSIGNED_CLIENT_ID)
    app_service.federated_credentials[CLIENT_ID] = [FederatedCredential(other_tenant, subject)]

    description = refusal(sign_in_with(app_service, identity_client()), 700211)

    assert f"No matching federated identity record found for presented assertion issuer '{ISSUER}'" in description


def test_no_credential_for_the_subject_is_aadsts700213(app_service: FakeUpstream) -> None:
    app_service.trust_managed_identity(CLIENT_ID, "6a1b2c3d-4e5f-4a6b-9c7d-8e9f0a1b2c3d")  # another identity

    description = refusal(sign_in_with(app_service, identity_client()), 700213)

    subject = app_service.principal_id(USER_ASSIGNED_CLIENT_ID)
    assert f"No matching federated identity record found for presented assertion subject '{subject}'" in description


def test_a_token_for_another_audience_is_aadsts70021(app_service: FakeUpstream) -> None:
    app_service.trust_managed_identity(CLIENT_ID, USER_ASSIGNED_CLIENT_ID)  # the public cloud's audience

    result = sign_in_with(app_service, identity_client(), audience="api://AzureADTokenExchangeUSGov")

    description = refusal(result, 70021)
    assert "Assertion Audience: 'api://AzureADTokenExchangeUSGov'" in description
    assert result["error"] == "invalid_request"


def test_only_the_emulators_own_managed_identity_tokens_count(app_service: FakeUpstream) -> None:
    fake = app_service
    fake.trust_managed_identity(CLIENT_ID, USER_ASSIGNED_CLIENT_ID)
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    now = int(time.time())
    claims = {"iss": ISSUER, "sub": fake.principal_id(USER_ASSIGNED_CLIENT_ID), "aud": EXCHANGE, "exp": now + 600}
    forged = jwt.encode(claims, pem, algorithm="RS256", headers={"kid": fake.identity_signing_key.kid})

    result = confidential(fake, {"client_assertion": lambda: forged}).acquire_token_for_client([PBI_SCOPE])

    assert "Assertion failed signature validation" in refusal(result, 50013)


def test_the_configuration_file_declares_credentials_and_object_ids(upstream: FakeUpstream) -> None:
    principal = "3f2e1d0c-9b8a-4765-a432-10fedcba9876"
    config = {
        "identity_principals": {USER_ASSIGNED_CLIENT_ID: principal},
        "federated_credentials": {CLIENT_ID: [{"issuer": ISSUER, "subject": principal, "audiences": [EXCHANGE]}]},
    }
    with FakeUpstream() as fake:
        fake.configure(json.loads(json.dumps(config)))
        assert fake.principal_id(USER_ASSIGNED_CLIENT_ID) == principal
        assert fake.federated_credentials[CLIENT_ID] == [FederatedCredential(ISSUER, principal, (EXCHANGE,))]
        with pytest.raises(ValueError, match="federated_credentials"):
            fake.configure({"federated_credentials": {CLIENT_ID: [{"issuer": ISSUER}]}})
