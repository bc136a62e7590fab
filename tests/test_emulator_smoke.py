"""Smoke tests proving the emulator against the real msal and requests clients (no mocks)."""

from __future__ import annotations

import time
import warnings
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msal
import pytest
import requests

from emulator import (
    CLIENT_ID,
    CLIENT_SECRET,
    DATASET_ID,
    PASSWORD,
    PUBLIC_CLIENT_ID,
    REPORT_ID,
    TENANT_ID,
    USERNAME,
    WORKSPACE_ID,
    FakeUpstream,
)

PBI_SCOPE = "https://analysis.windows.net/powerbi/api/.default"


class PortRoutingSession(requests.Session):
    """MSAL builds the userrealm URL from the authority's hostname and drops the
    port; route such port-less calls back to the fake."""

    def __init__(self, port: int) -> None:
        super().__init__()
        self.port = port

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> Any:
        prefix = "https://localhost/"
        if isinstance(url, str) and url.startswith(prefix):
            url = f"https://localhost:{self.port}/" + url[len(prefix) :]
        return super().request(method, url, *args, **kwargs)


@pytest.fixture(scope="module")
def server() -> Iterator[FakeUpstream]:
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def fake(server: FakeUpstream, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    ca_file = str(server.write_ca_pem(tmp_path / "ca.pem"))
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", ca_file)
    monkeypatch.setenv("SSL_CERT_FILE", ca_file)
    server.reset()
    return server


def confidential(
    fake: FakeUpstream, credential: Any = None, tenant: str = TENANT_ID
) -> msal.ConfidentialClientApplication:
    """The app CLIENT_ID, signing in with its current secret unless ``credential`` is given."""
    return msal.ConfidentialClientApplication(
        CLIENT_ID,
        client_credential=credential or fake.clients[CLIENT_ID],
        authority=f"{fake.base_url}/{tenant}",
        instance_discovery=False,
        http_client=PortRoutingSession(fake.port),
    )


def _public_login(fake: FakeUpstream, password: str) -> dict[str, Any]:
    app = msal.PublicClientApplication(
        PUBLIC_CLIENT_ID,
        authority=f"{fake.base_url}/organizations",
        instance_discovery=False,
        http_client=PortRoutingSession(fake.port),
    )
    with pytest.warns(DeprecationWarning, match="deprecated"):
        result: dict[str, Any] = app.acquire_token_by_username_password(USERNAME, password, scopes=[PBI_SCOPE])
    return result


def _bearer(fake: FakeUpstream) -> dict[str, str]:
    result = confidential(fake).acquire_token_for_client([PBI_SCOPE])
    return {"Authorization": f"Bearer {result['access_token']}"}


def test_client_credentials_then_msal_cache(fake: FakeUpstream) -> None:
    app = confidential(fake)
    first = app.acquire_token_for_client([PBI_SCOPE])
    assert first["access_token"].startswith("fake-at-")
    assert len(fake.calls("GET", "/.well-known/openid-configuration")) == 1
    [call] = fake.token_calls
    assert call.form["grant_type"] == "client_credentials"
    assert call.form["client_secret"] == CLIENT_SECRET
    second = app.acquire_token_for_client([PBI_SCOPE])
    assert second["access_token"] == first["access_token"]
    assert second["token_source"] == "cache"
    assert len(fake.token_calls) == 1


def test_username_password_grant(fake: FakeUpstream) -> None:
    result = _public_login(fake, PASSWORD)
    assert "access_token" in result, result
    assert result["id_token_claims"]["preferred_username"] == USERNAME
    assert result["refresh_token"] in fake.refresh_tokens
    [realm] = fake.calls("GET", "/common/userrealm/")
    assert realm.path == f"/common/userrealm/{USERNAME}"
    assert realm.query == {"api-version": "1.0"}
    [token] = fake.token_calls
    assert token.path == "/organizations/oauth2/v2.0/token"
    assert token.form["grant_type"] == "password"
    assert token.form["username"] == USERNAME
    assert PBI_SCOPE in token.form["scope"].split()
    assert "client_secret" not in token.form


def test_wrong_password_is_aadsts50126(fake: FakeUpstream) -> None:
    result = _public_login(fake, "wrong")
    assert result["error"] == "invalid_grant"
    assert result["error_codes"] == [50126]
    assert result["error_description"].startswith("AADSTS50126: Error validating credentials")


def test_report_and_v2_generate_token(fake: FakeUpstream) -> None:
    fake.next_lifetimes.append(600)  # an Entra token shorter than the embed default (60 min)
    auth = _bearer(fake)
    entra_expiry = fake.access_tokens[auth["Authorization"].split()[1]].expires_at
    base = f"{fake.base_url}/v1.0/myorg"
    report = requests.get(f"{base}/groups/{WORKSPACE_ID}/reports/{REPORT_ID}", headers=auth, timeout=5)
    assert report.status_code == 200
    assert report.json()["datasetId"] == DATASET_ID
    body = {"reports": [{"id": REPORT_ID}], "datasets": [{"id": DATASET_ID}]}
    embed = requests.post(f"{base}/GenerateToken", json=body, headers=auth, timeout=5)
    assert embed.status_code == 200, embed.text
    expiration = datetime.strptime(embed.json()["expiration"], "%Y-%m-%dT%H:%M:%SZ")
    assert expiration.replace(tzinfo=UTC).timestamp() <= entra_expiry
    assert embed.headers["RequestId"] == fake.issued_request_ids[-1]
    assert fake.embed_tokens[embed.json()["token"]].token_id == embed.json()["tokenId"]


def test_power_bi_requires_bearer(fake: FakeUpstream) -> None:
    response = requests.get(f"{fake.base_url}/v1.0/myorg/groups/{WORKSPACE_ID}/reports/{REPORT_ID}", timeout=5)
    assert response.status_code == 401
    assert 'error="invalid_token"' in response.headers["WWW-Authenticate"]
    assert response.json()["error"]["code"] == "PowerBINotAuthorizedException"
    assert response.headers["RequestId"]


def test_generate_token_rejects_unknown_key(fake: FakeUpstream) -> None:
    body = {"reports": [{"id": REPORT_ID}], "datasets": [{"id": DATASET_ID}], "accessLevel": "View"}
    response = requests.post(f"{fake.base_url}/v1.0/myorg/GenerateToken", json=body, headers=_bearer(fake), timeout=5)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "InvalidRequest"
    assert "accessLevel" in response.json()["error"]["message"]


def test_throttle_once_then_normal(fake: FakeUpstream) -> None:
    auth = _bearer(fake)
    fake.throttle("/reports/", retry_after=7)
    url = f"{fake.base_url}/v1.0/myorg/groups/{WORKSPACE_ID}/reports/{REPORT_ID}"
    throttled = requests.get(url, headers=auth, timeout=5)
    assert throttled.status_code == 429
    assert throttled.headers["Retry-After"] == "7"
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert throttled.headers["RequestId"]
    assert requests.get(url, headers=auth, timeout=5).status_code == 200
    assert len(fake.calls("GET", "/reports/")) == 2


def test_hang_trips_client_deadline_and_never_blocks_stop(fake: FakeUpstream) -> None:
    url = f"{fake.base_url}/v1.0/myorg/groups/{WORKSPACE_ID}/reports/{REPORT_ID}"
    fake.fault("GET", "/reports/", status=200, body={}, hang=0.5)
    with pytest.raises(requests.exceptions.ReadTimeout):
        requests.get(url, timeout=0.2)
    # A handler hanging far longer than the test must not hold up stop().
    with FakeUpstream(ca=fake.ca) as other:
        other.fault("*", "/reports/", status=200, body={}, hang=60)
        with pytest.raises(requests.exceptions.ReadTimeout):
            requests.get(url.replace(fake.base_url, other.base_url), timeout=0.2)
        started = time.monotonic()
    assert time.monotonic() - started < 5


def test_entra_forced_failure_and_refresh(fake: FakeUpstream) -> None:
    fake.fail_sign_in.append(53003)
    blocked = _public_login(fake, PASSWORD)
    assert blocked["error_codes"] == [53003]
    ok = _public_login(fake, PASSWORD)
    app = msal.PublicClientApplication(
        PUBLIC_CLIENT_ID,
        authority=f"{fake.base_url}/organizations",
        instance_discovery=False,
        http_client=PortRoutingSession(fake.port),
    )
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        refreshed = app.acquire_token_by_refresh_token(ok["refresh_token"], [PBI_SCOPE])
    assert "access_token" in refreshed, refreshed
    assert fake.token_calls[-1].form["grant_type"] == "refresh_token"
