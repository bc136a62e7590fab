"""Power BI 401 for an expired or rejected Entra token: sign in afresh (past MSAL's cache) and repeat once."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from emulator import CLIENT_ID, DASHBOARD_ID, REPORT_ID, USERNAME, WORKSPACE_ID, FakeUpstream
from shared.embed import EmbedService
from shared.errors import PowerBIRefused

TOKEN_EXPIRED = {"error": {"code": "TokenExpired", "message": "Access token has expired, resubmit with a new one"}}


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def bearers(fake: FakeUpstream, path_contains: str) -> list[str]:
    return [r.headers["authorization"].removeprefix("Bearer ") for r in fake.calls(path_contains=path_contains)]


def test_a_revoked_cached_token_is_replaced_and_the_call_repeated(call: Callable[..., Any], fake: FakeUpstream) -> None:
    assert call(f"/api/embed/reports/{REPORT_ID}").status_code == 200
    [first] = bearers(fake, "GenerateToken")
    fake.reject_token(first)  # revoked (a password change, say): still valid by time

    response = call(f"/api/embed/dashboards/{DASHBOARD_ID}")  # served with MSAL's cached token first

    assert response.status_code == 200
    dashboards = bearers(fake, "/dashboards")
    assert dashboards[0] == first and first not in dashboards[1:]  # one refusal, then the fresh token
    assert [t.form["grant_type"] for t in fake.token_calls] == ["password", "refresh_token"]


def test_token_expired_is_retried_even_for_a_token_just_issued(call: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.fault("POST", "GenerateToken", status=401, body=TOKEN_EXPIRED)

    response = call(f"/api/embed/reports/{REPORT_ID}")

    assert response.status_code == 200
    first, second = bearers(fake, "GenerateToken")
    assert first != second
    assert len(fake.token_calls) == 2


def test_a_401_to_a_token_just_issued_is_not_retried(call: Callable[..., Any], fake: FakeUpstream) -> None:
    fake.fault("POST", "GenerateToken", status=401)  # not TokenExpired, and the token did not come from a cache

    response = call(f"/api/embed/reports/{REPORT_ID}")

    assert (response.status_code, body(response)["error"]["code"]) == (502, "powerbi_error")
    assert len(fake.calls("POST", "GenerateToken")) == 1
    assert len(fake.token_calls) == 1


def test_when_the_fresh_token_is_refused_too_it_is_the_not_a_member_answer(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    assert call(f"/api/embed/reports/{REPORT_ID}").status_code == 200
    fake.set_member(WORKSPACE_ID, USERNAME, None)  # removed from the workspace
    fake.set_member(WORKSPACE_ID, CLIENT_ID, None)

    response = call(f"/api/embed/dashboards/{DASHBOARD_ID}")

    assert (response.status_code, body(response)["error"]["code"]) == (502, "powerbi_error")
    assert "make it a member" in body(response)["error"]["message"]
    assert len(fake.calls("GET", f"/groups/{WORKSPACE_ID}/dashboards")) == 2  # once more, and only once


def test_the_retry_happens_at_most_once_per_request(
    fake: FakeUpstream, env: dict[str, str], make_service: Callable[[dict[str, str]], EmbedService]
) -> None:
    service = make_service(env)
    service.embed("report", REPORT_ID)
    fake.fault("GET", "/dashboards", status=401, body=TOKEN_EXPIRED, times=5)

    with pytest.raises(PowerBIRefused):
        service.embed("dashboard", DASHBOARD_ID)
    assert len(fake.calls("GET", "/dashboards")) == 2
