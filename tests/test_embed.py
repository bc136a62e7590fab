"""The embed routes end to end, in-process: real MSAL and requests against the fake over HTTPS."""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

import function_app
from emulator import (
    CLIENT_ID,
    DASHBOARD_ID,
    DATASET_ID,
    OTHER_REPORT_ID,
    OTHER_WORKSPACE_ID,
    PUBLIC_CLIENT_ID,
    REPORT_ID,
    WORKSPACE_ID,
    FakeUpstream,
)
from shared.embed import EmbedService
from tests.conftest import PASSWORD, SECRET, FakeClock

REPORT = f"/api/embed/reports/{REPORT_ID}"
DASHBOARD = f"/api/embed/dashboards/{DASHBOARD_ID}"
UNKNOWN_REPORT_ID = "0f0f0f0f-1111-4222-8333-444455556666"


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def error_code(response: Any) -> str:
    return str(body(response)["error"]["code"])


def paths(fake: FakeUpstream) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests]


# --- the contract ------------------------------------------------------------------------------------------


def test_report_for_a_master_user_through_a_confidential_client(call: Callable[..., Any], fake: FakeUpstream) -> None:
    response = call(REPORT)

    assert response.status_code == 200
    assert response.headers["Cache-Control"] == "no-store"
    assert response.mimetype == "application/json"
    answer = body(response)
    issued = fake.embed_tokens[answer["accessToken"]]
    assert answer == {
        "type": "report",
        "id": REPORT_ID,
        "workspaceId": WORKSPACE_ID,
        "embedUrl": answer["embedUrl"],
        "accessToken": answer["accessToken"],
        "tokenType": "Embed",
        "tokenId": issued.token_id,
        "expiration": issued.expiration,
    }
    assert answer["embedUrl"].startswith(f"https://app.powerbi.com/reportEmbed?reportId={REPORT_ID}&groupId=")
    # What went upstream: discovery, user realm, a password grant with the secret, the workspace's reports
    # and datasets (the catalog: embed URL, dataset, row-level-security flags), V2 GenerateToken.
    assert paths(fake) == [
        f"GET /{fake.tenant_guid}/v2.0/.well-known/openid-configuration",
        "GET /common/userrealm/embed.user@contoso.com",
        f"POST /{fake.tenant_guid}/oauth2/v2.0/token",
        f"GET /v1.0/myorg/groups/{WORKSPACE_ID}/reports",
        f"GET /v1.0/myorg/groups/{WORKSPACE_ID}/datasets",
        "POST /v1.0/myorg/GenerateToken",
    ]
    grant = fake.token_calls[0].form
    assert (grant["grant_type"], grant["client_id"], grant["client_secret"]) == ("password", CLIENT_ID, SECRET)
    assert "https://analysis.windows.net/powerbi/api/.default" in grant["scope"].split()
    generate = fake.calls("POST", "GenerateToken")[0]
    assert generate.json == {"reports": [{"id": REPORT_ID}], "datasets": [{"id": DATASET_ID}]}
    assert generate.headers["authorization"].removeprefix("Bearer ") in fake.access_tokens


def test_dashboard(call: Callable[..., Any], fake: FakeUpstream) -> None:
    response = call(DASHBOARD)

    assert response.status_code == 200
    answer = body(response)
    assert (answer["type"], answer["id"], answer["workspaceId"]) == ("dashboard", DASHBOARD_ID, WORKSPACE_ID)
    assert answer["embedUrl"].startswith(f"https://app.powerbi.com/dashboardEmbed?dashboardId={DASHBOARD_ID}")
    assert answer["accessToken"] in fake.embed_tokens
    generate = fake.calls("POST", "/GenerateToken")
    assert [r.path for r in generate] == [f"/v1.0/myorg/groups/{WORKSPACE_ID}/dashboards/{DASHBOARD_ID}/GenerateToken"]
    assert generate[0].json == {"accessLevel": "View"}


def test_master_user_through_a_public_client(call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]) -> None:
    env["POWERBI_CLIENT_ID"] = PUBLIC_CLIENT_ID
    del env["POWERBI_CLIENT_SECRET"]

    assert call(REPORT).status_code == 200
    assert call(DASHBOARD).status_code == 200
    assert len(fake.token_calls) == 1  # the second request's Entra token came from MSAL's cache
    grant = fake.token_calls[0].form
    assert (grant["grant_type"], grant["client_id"], grant["password"]) == ("password", PUBLIC_CLIENT_ID, PASSWORD)
    assert "client_secret" not in grant


def test_service_principal(call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]) -> None:
    env["POWERBI_AUTH_MODE"] = "ServicePrincipal"
    del env["POWERBI_USERNAME"], env["POWERBI_PASSWORD"]

    assert call(REPORT).status_code == 200
    assert call(DASHBOARD).status_code == 200
    assert not fake.calls(path_contains="userrealm")
    assert [(t.form["grant_type"], t.form["client_secret"]) for t in fake.token_calls] == [
        ("client_credentials", SECRET)
    ]
    assert {
        fake.access_tokens[t.headers["authorization"][7:]].principal for t in fake.calls(path_contains="/v1.0/")
    } == {CLIENT_ID}


def test_workspace_from_the_query_and_lifetime_from_settings(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_ALLOWED_WORKSPACES"] = f"{WORKSPACE_ID},{OTHER_WORKSPACE_ID.upper()}"
    env["POWERBI_TOKEN_LIFETIME_MINUTES"] = "30"

    response = call(f"/api/embed/reports/{OTHER_REPORT_ID}", workspaceId=OTHER_WORKSPACE_ID)

    assert response.status_code == 200
    assert body(response)["workspaceId"] == OTHER_WORKSPACE_ID
    assert fake.calls("POST", "GenerateToken")[0].json["lifetimeInMinutes"] == 30


# --- denial before any upstream call -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "params", "status", "code"),
    [
        ("/api/embed/reports/not-a-guid", {}, 400, "invalid_request"),
        (f"/api/embed/reports/{{{REPORT_ID}}}", {}, 400, "invalid_request"),
        (REPORT, {"workspaceId": "../../groups"}, 400, "invalid_request"),
        (REPORT, {"workspaceId": ""}, 400, "invalid_request"),
        (REPORT, {"workspaceId": OTHER_WORKSPACE_ID}, 403, "not_allowed"),
        (DASHBOARD, {"workspaceId": OTHER_WORKSPACE_ID}, 403, "not_allowed"),
    ],
)
def test_refused_without_an_upstream_call(
    call: Callable[..., Any], fake: FakeUpstream, path: str, params: dict[str, str], status: int, code: str
) -> None:
    response = call(path, **params)

    assert (response.status_code, error_code(response)) == (status, code)
    assert fake.requests == []


def test_items_outside_the_allow_lists_are_refused(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_ALLOWED_REPORTS"] = UNKNOWN_REPORT_ID
    env["POWERBI_ALLOWED_DASHBOARDS"] = UNKNOWN_REPORT_ID

    for path in (REPORT, DASHBOARD):
        response = call(path)
        assert (response.status_code, error_code(response)) == (403, "not_allowed")
    assert fake.requests == []


# --- upstream failures -------------------------------------------------------------------------------------


def test_unknown_report_is_404(call: Callable[..., Any], fake: FakeUpstream) -> None:
    response = call(f"/api/embed/reports/{UNKNOWN_REPORT_ID}")

    assert (response.status_code, error_code(response)) == (404, "not_found")
    assert not fake.calls("POST", "GenerateToken")


@pytest.mark.parametrize("aadsts", [50076, 50079, 50126, 65001, 700016, 7000215, 53003])
def test_sign_in_refused_is_502_with_the_aadsts_code(call: Callable[..., Any], fake: FakeUpstream, aadsts: int) -> None:
    fake.fail_sign_in.append(aadsts)

    response = call(REPORT)

    assert (response.status_code, error_code(response)) == (502, "sign_in_failed")
    assert f"AADSTS{aadsts}" in body(response)["error"]["message"]
    assert not fake.calls(path_contains="/v1.0/")


def test_wrong_password_names_the_settings_to_check(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_PASSWORD"] = "not-the-password"

    message = body(call(REPORT))["error"]["message"]

    assert "AADSTS50126" in message
    assert "POWERBI_PASSWORD" in message
    assert "not-the-password" not in message


@pytest.mark.parametrize("status", [401, 403])
def test_power_bi_refusal_is_502_with_status_and_request_id(
    call: Callable[..., Any], fake: FakeUpstream, status: int
) -> None:
    fake.fault("POST", "GenerateToken", status=status)

    response = call(REPORT)

    assert (response.status_code, error_code(response)) == (502, "powerbi_error")
    message = body(response)["error"]["message"]
    assert f"HTTP {status}" in message
    assert fake.issued_request_ids[-1] in message


def test_throttled_once_then_served(call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock) -> None:
    fake.throttle("GenerateToken", retry_after=2)

    response = call(REPORT)

    assert response.status_code == 200
    assert len(fake.calls("POST", "GenerateToken")) == 2
    assert clock.sleeps == [2]


def test_persistent_throttling_is_429_with_retry_after(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    fake.throttle("GenerateToken", retry_after=3, times=10)

    response = call(REPORT)

    assert (response.status_code, error_code(response)) == (429, "throttled")
    assert response.headers["Retry-After"] == "3"
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"  # readable by a CORS page
    assert len(fake.calls("POST", "GenerateToken")) == 4  # the first try and three retries
    assert clock.sleeps == [3, 3, 3]


def test_throttling_longer_than_the_deadline_is_not_waited_for(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    fake.throttle("GenerateToken", retry_after=120, times=10)

    response = call(REPORT)

    assert (response.status_code, response.headers["Retry-After"]) == (429, "120")
    assert len(fake.calls("POST", "GenerateToken")) == 1
    assert clock.sleeps == []


def test_power_bi_unavailable_is_503_with_retry_after(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    fake.fault("GET", "/reports", status=503, headers={"Retry-After": "1"}, times=10)

    response = call(REPORT)

    assert (response.status_code, error_code(response), response.headers["Retry-After"]) == (503, "unavailable", "1")
    assert len(fake.calls("GET", "/reports")) == 4


def test_server_errors_are_retried_with_backoff(call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock) -> None:
    fake.fault("POST", "GenerateToken", status=500, times=10)

    response = call(REPORT)

    # Still failing after the retries: unavailable, like a 503, with Power BI's default wait.
    assert (response.status_code, error_code(response), response.headers["Retry-After"]) == (503, "unavailable", "30")
    assert len(fake.calls("POST", "GenerateToken")) == 4
    # urllib3's exponential back-off (factor 0.5, the first retry at once) with up to 0.5 s of jitter.
    assert len(clock.sleeps) == 2
    assert 1 <= clock.sleeps[0] <= 1.5 and 2 <= clock.sleeps[1] <= 2.5


def test_hanging_upstream_is_504_inside_the_deadline(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_REQUEST_DEADLINE_SECONDS"] = "1"
    fake.fault("POST", "GenerateToken", status=200, hang=10)

    started = time.monotonic()
    response = call(REPORT)
    elapsed = time.monotonic() - started

    assert (response.status_code, error_code(response), response.headers["Retry-After"]) == (
        504,
        "upstream_timeout",
        "10",
    )
    assert elapsed < 3  # one second of deadline, plus start-up; the upstream would have hung for ten
    assert len(fake.calls("POST", "GenerateToken")) == 1  # a timed-out read is not retried


def test_unreachable_power_bi_is_502(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str], unused_port: int
) -> None:
    env["POWERBI_API_URL"] = f"https://localhost:{unused_port}"

    response = call(REPORT)

    assert (response.status_code, error_code(response), response.headers["Retry-After"]) == (
        502,
        "upstream_unreachable",
        "10",
    )


@pytest.fixture
def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --- configuration -----------------------------------------------------------------------------------------


def test_configuration_error_is_500_naming_the_setting(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    del env["POWERBI_CLIENT_ID"]

    response = call(REPORT)

    assert (response.status_code, error_code(response)) == (500, "configuration_error")
    assert "POWERBI_CLIENT_ID is required" in body(response)["error"]["message"]
    assert fake.requests == []


def test_unresolved_key_vault_reference_is_never_sent(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    reference = "@Microsoft.KeyVault(SecretUri=https://vault-x.vault.azure.net/secrets/pbi-password/)"
    env["POWERBI_PASSWORD"] = reference

    response = call(REPORT)

    assert (response.status_code, error_code(response)) == (500, "configuration_error")
    message = body(response)["error"]["message"]
    assert "POWERBI_PASSWORD is a Key Vault reference" in message
    assert "managed identity" in message
    assert "vault-x" not in message
    assert fake.requests == []


def test_health(call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]) -> None:
    response = call("/api/health")

    assert response.status_code == 200
    assert body(response) == {"status": "ok", "authMode": "MasterUser", "clientType": "confidential"}
    assert SECRET not in response.get_body().decode()
    assert fake.requests == []


def test_health_reports_every_problem_without_values(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_WORKSPACE_ID"] = "workspace-secretish"
    env["POWERBI_CLIENT_SECRET"] = "@Microsoft.KeyVault(VaultName=v;SecretName=s)"
    del env["POWERBI_USERNAME"]

    response = call("/api/health")

    assert (response.status_code, body(response)["status"]) == (500, "misconfigured")
    message = " ".join(body(response)["problems"])  # listed with details on (the env fixture's)
    for problem in ("POWERBI_WORKSPACE_ID must be a GUID", "POWERBI_CLIENT_SECRET is a Key Vault", "POWERBI_USERNAME"):
        assert problem in message
    assert "secretish" not in message and "VaultName" not in message


# --- speed: the caches --------------------------------------------------------------------------------------


def test_many_requests_one_upstream_round(call: Callable[..., Any], fake: FakeUpstream) -> None:
    answers = {body(call(REPORT))["accessToken"] for _ in range(100)}

    assert len(answers) == 1
    assert len(fake.requests) == 6  # discovery, user realm, sign-in, reports list, datasets list, GenerateToken


def test_concurrent_cold_requests_share_one_generate_token(
    fake: FakeUpstream, env: dict[str, str], make_service: Callable[[dict[str, str]], EmbedService]
) -> None:
    service = make_service(env)
    start = threading.Barrier(32)
    tokens: list[str] = []

    def request() -> None:
        start.wait()
        tokens.append(service.embed("report", REPORT_ID, None).token.token)

    threads = [threading.Thread(target=request) for _ in range(32)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert len(tokens) == 32 and len(set(tokens)) == 1
    assert len(fake.calls("POST", "GenerateToken")) == 1
    assert len(fake.token_calls) == 1


def test_a_token_with_less_than_the_minimum_left_is_not_reused(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, env: dict[str, str]
) -> None:
    env["POWERBI_CATALOG_TTL_SECONDS"] = "3600"
    first = body(call(REPORT))
    clock.advance(49 * 60)  # 11 minutes left of 60: still handed out
    assert body(call(REPORT))["accessToken"] == first["accessToken"]
    clock.advance(2 * 60)  # 9 minutes left, under the 10-minute minimum

    second = body(call(REPORT))

    assert second["accessToken"] != first["accessToken"]
    assert len(fake.calls("POST", "GenerateToken")) == 2
    assert len(fake.calls("GET", "/reports")) == 1  # the embed URL came from the catalog


def test_a_short_lived_entra_token_is_refreshed_before_generate_token(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    fake.next_lifetimes.append(9 * 60)  # less than the 10-minute minimum plus margin

    response = call(REPORT)

    assert response.status_code == 200
    assert [t.form["grant_type"] for t in fake.token_calls] == ["password", "refresh_token"]
    bearer = fake.calls("POST", "GenerateToken")[0].headers["authorization"].removeprefix("Bearer ")
    assert fake.access_tokens[bearer].expires_at - time.time() > 50 * 60
    expiration = datetime.fromisoformat(body(response)["expiration"]).timestamp()
    assert expiration - time.time() > 50 * 60


# --- what is written down ----------------------------------------------------------------------------------


def test_logs_hold_no_secret_and_one_line_per_request(
    call: Callable[..., Any],
    fake: FakeUpstream,
    env: dict[str, str],
    make_service: Callable[[dict[str, str]], EmbedService],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    function_app.use_service(make_service({**env, "POWERBI_PASSWORD": PASSWORD + "-wrong"}))
    call(REPORT)  # a refused sign-in
    function_app.use_service(None)
    answers = [body(call(REPORT)), body(call(REPORT)), body(call(DASHBOARD))]
    dashboard_request_ids = fake.issued_request_ids[-2:]
    call(f"/api/embed/reports/{OTHER_REPORT_ID}", workspaceId=WORKSPACE_ID)  # 404: not in the catalog

    text = "\n".join(record.getMessage() for record in caplog.records)
    forbidden = [SECRET, PASSWORD, *fake.access_tokens, *fake.refresh_tokens, *fake.embed_tokens]
    assert [value for value in forbidden if value in text] == []
    assert "Traceback" not in text
    ours = [r.getMessage() for r in caplog.records if r.name.startswith("shared.embed")]
    assert len(ours) == 3
    assert "cache=miss" in ours[0] and f"token_id={answers[0]['tokenId']}" in ours[0]
    assert "cache=hit" in ours[1] and "upstream_calls=0" in ours[1]
    assert all(request_id in ours[2] for request_id in dashboard_request_ids)
    errors = [r.getMessage() for r in caplog.records if r.name == "shared.responses"]
    assert len(errors) == 2
    assert "AADSTS50126" in errors[0]
    assert "404 not_found" in errors[1] and f"report {OTHER_REPORT_ID} not in the catalog" in errors[1]


def test_auth_level_is_function_unless_set_to_anonymous(monkeypatch: pytest.MonkeyPatch) -> None:
    import importlib

    def auth_levels() -> set[str]:
        module = importlib.reload(function_app)
        functions = module.app.get_functions()
        # /api/health (a platform probe carries no key) and /api/openapi.json are anonymous whatever the setting.
        anonymous = {"health", "openapi"}
        return {f.get_trigger().auth_level.value for f in functions if f.get_function_name() not in anonymous}

    try:
        assert auth_levels() == {"function"}
        monkeypatch.setenv("POWERBI_HTTP_AUTH_LEVEL", "anonymous")
        assert auth_levels() == {"anonymous"}
        monkeypatch.setenv("POWERBI_HTTP_AUTH_LEVEL", "nobody")  # unknown: deny, not open
        assert auth_levels() == {"function"}
    finally:
        monkeypatch.delenv("POWERBI_HTTP_AUTH_LEVEL", raising=False)
        importlib.reload(function_app)
