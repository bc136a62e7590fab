"""Answers that disclose nothing: generic messages and a requestId in production, details only when asked for."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import requests

import function_app
from emulator import REPORT_ID, WORKSPACE_ID, FakeUpstream
from emulator.host import FunctionRoutes, LocalHost
from shared.embed import EmbedService
from shared.errors import PUBLIC_MESSAGES, ConfigurationError
from shared.settings import Settings

REPORT = f"/api/embed/reports/{REPORT_ID}"
# What a production answer must never name.
TELLTALES = ("POWERBI_", "AADSTS", "MasterUser", "ServicePrincipal", "RequestId", "tenant", "HTTP 4", "HTTP 5")


@pytest.fixture
def production(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The app as deployed: no POWERBI_ERROR_DETAILS, not Development."""
    del env["POWERBI_ERROR_DETAILS"]
    monkeypatch.delenv("AZURE_FUNCTIONS_ENVIRONMENT", raising=False)
    return env


def error_of(response: Any) -> dict[str, str]:
    return dict(json.loads(response.get_body())["error"])


def test_a_sign_in_refusal_in_production(
    call: Callable[..., Any],
    routes: FunctionRoutes,
    fake: FakeUpstream,
    production: dict[str, str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    fake.fail_sign_in.append(50126)

    with caplog.at_level(logging.WARNING, logger="shared.responses"):
        response = call(REPORT)

    error = error_of(response)
    assert response.status_code == 502
    assert set(error) == {"code", "message", "requestId"}
    assert error == {
        "code": "sign_in_failed",
        "message": "The function could not sign in to Power BI.",
        "requestId": routes.contexts[-1].invocation_id,  # the invocation's context.invocation_id
    }
    # The one log line has the request id and the full cause.
    (line,) = [r.getMessage() for r in caplog.records if "answered 502" in r.getMessage()]
    assert f"requestId={error['requestId']}" in line and "AADSTS50126" in line


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ({"method": "POST", "path_contains": "GenerateToken", "status": 403}, 502, "powerbi_error"),
        ({"method": "GET", "path_contains": "/reports", "status": 401}, 502, "powerbi_error"),
        ({"method": "POST", "path_contains": "GenerateToken", "status": 429, "times": 4}, 429, "throttled"),
    ],
)
def test_power_bi_failures_in_production(
    call: Callable[..., Any],
    fake: FakeUpstream,
    production: dict[str, str],
    fault: dict[str, Any],
    status: int,
    code: str,
) -> None:
    fake.fault(**fault, headers={"Retry-After": "3"})

    response = call(REPORT)

    error = error_of(response)
    assert (response.status_code, error["code"], error["message"]) == (status, code, PUBLIC_MESSAGES[code])
    assert not any(word in error["message"] for word in TELLTALES)
    assert not any(rid in response.get_body().decode() for rid in fake.issued_request_ids)
    if status == 429:
        assert response.headers["Retry-After"] == "3"  # codes, statuses and Retry-After stay as they are


@pytest.mark.parametrize(
    ("environment", "flag", "detailed"),
    [
        ("Development", None, True),  # Core Tools sets it
        (None, "true", True),
        ("Development", "false", False),  # false wins
        ("Production", None, False),
        (None, None, False),
    ],
)
def test_details_only_when_asked_for(
    call: Callable[..., Any],
    fake: FakeUpstream,
    production: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
    environment: str | None,
    flag: str | None,
    detailed: bool,
) -> None:
    if environment:
        monkeypatch.setenv("AZURE_FUNCTIONS_ENVIRONMENT", environment)
        production["AZURE_FUNCTIONS_ENVIRONMENT"] = environment
    if flag:
        production["POWERBI_ERROR_DETAILS"] = flag
    fake.fail_sign_in.append(50126)

    message = error_of(call(REPORT))["message"]

    assert ("AADSTS50126" in message and "POWERBI_PASSWORD" in message) is detailed
    assert (message == PUBLIC_MESSAGES["sign_in_failed"]) is not detailed


def test_an_unknown_item_in_production(call: Callable[..., Any], production: dict[str, str]) -> None:
    response = call("/api/embed/reports/0d5b6c43-9f8e-4a51-b2c7-3e4f5a6b7c8d")

    error = error_of(response)
    # A 4xx says what is wrong with the request (tests/test_answers.py has every 4xx), nothing about the setup.
    assert (response.status_code, error["code"]) == (404, "not_found")
    assert error["message"] == (f"There is no report 0d5b6c43-9f8e-4a51-b2c7-3e4f5a6b7c8d in workspace {WORKSPACE_ID}.")


def test_a_configuration_error_names_no_setting_in_production(
    call: Callable[..., Any], production: dict[str, str]
) -> None:
    del production["POWERBI_USERNAME"]

    response = call(REPORT)

    error = error_of(response)
    assert (response.status_code, error["code"]) == (500, "configuration_error")
    assert error["message"] == "The function is not configured correctly."
    assert error["requestId"]


def test_an_unknown_details_value_is_a_configuration_error(env: dict[str, str]) -> None:
    with pytest.raises(ConfigurationError, match="POWERBI_ERROR_DETAILS must be true or false"):
        Settings.from_env({**env, "POWERBI_ERROR_DETAILS": "yes please"})


# --- /api/health ---------------------------------------------------------------------------------------------


@pytest.fixture
def keyed_host(fake: FakeUpstream) -> Iterator[str]:
    """The app over HTTP with function keys enforced, as in Azure."""
    with LocalHost(FunctionRoutes(function_app.app, keys={"key-123"})) as local:
        yield local.url
    function_app.use_service(None)


def test_health_is_anonymous_and_tells_nothing(
    keyed_host: str, production: dict[str, str], make_service: Callable[[dict[str, str]], EmbedService]
) -> None:
    function_app.use_service(make_service(production))

    health = requests.get(f"{keyed_host}/api/health", timeout=10)  # no function key
    embed = requests.get(f"{keyed_host}{REPORT}", timeout=10)

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert embed.status_code == 401  # the other routes still need a key


def test_health_misconfigured_in_production(
    call: Callable[..., Any], routes: FunctionRoutes, production: dict[str, str]
) -> None:
    production["POWERBI_WORKSPACE_ID"] = "not-a-guid"

    response = call("/api/health")

    assert response.status_code == 500
    assert json.loads(response.get_body()) == {
        "status": "misconfigured",
        "requestId": routes.contexts[-1].invocation_id,
    }


def test_health_with_details_lists_the_problems(call: Callable[..., Any], env: dict[str, str]) -> None:
    env["POWERBI_WORKSPACE_ID"] = "not-a-guid"
    del env["POWERBI_USERNAME"]

    body = json.loads(call("/api/health").get_body())

    assert body["status"] == "misconfigured"
    assert body["problems"] == ["POWERBI_USERNAME is required", "POWERBI_WORKSPACE_ID must be a GUID"]


def test_health_ok_with_details(call: Callable[..., Any]) -> None:
    body = json.loads(call("/api/health").get_body())

    assert body == {"status": "ok", "authMode": "MasterUser", "clientType": "confidential"}
