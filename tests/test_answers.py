"""Issue 17, section 4: answers.

- Every answer caused by a transient upstream fault carries Retry-After; Power BI 500/502/504 after the
  retries is 503 unavailable, like 503; a Retry-After date (from Power BI or Entra) is counted on the
  injected clock; an answer from Entra's token endpoint that is not JSON (an HTML page, any status) is
  503 signin_unavailable.
- A 4xx answer says what is wrong with the request in production too, and never names a setting.

Real MSAL and requests against the emulator over HTTPS; the emulator records what was sent.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from email.utils import formatdate
from typing import Any

import pytest

from emulator import (
    DASHBOARD_ID,
    DATASET_ID,
    OTHER_REPORT_ID,
    OTHER_WORKSPACE_ID,
    REPORT_ID,
    RLS_REPORT_ID,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator.entra import OUTAGE_PAGE, entra_html_page, entra_unavailable
from tests.conftest import FakeClock

REPORT = f"/api/embed/reports/{REPORT_ID}"
ATTEMPTS = 4  # the first try and the HTTP client's 3 retries
DAY = 86400.0
# What a production answer must never name: settings, auth modes, tenants, AADSTS codes, upstream statuses.
TELLTALES = ("POWERBI_", "AADSTS", "MasterUser", "ServicePrincipal", "ManagedIdentity", "RequestId", "tenant", "HTTP ")


def answer(response: Any) -> tuple[int, str, str | None]:
    body = json.loads(response.get_body())
    return response.status_code, body["error"]["code"], response.headers.get("Retry-After")


def message(response: Any) -> str:
    return str(json.loads(response.get_body())["error"]["message"])


@pytest.fixture
def production(env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> dict[str, str]:
    """The app as deployed: error details off."""
    del env["POWERBI_ERROR_DETAILS"]
    monkeypatch.delenv("AZURE_FUNCTIONS_ENVIRONMENT", raising=False)
    return env


# --- transient faults: 503 with Retry-After ------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 502, 503, 504])
@pytest.mark.parametrize(("method", "path"), [("POST", "GenerateToken"), ("GET", f"/groups/{WORKSPACE_ID}/reports")])
def test_power_bi_server_errors_after_the_retries_are_503_unavailable(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, status: int, method: str, path: str
) -> None:
    fake.fault(method, path, status=status, times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (503, "unavailable", "30")  # Power BI said no wait: its default
    assert response.headers["Access-Control-Expose-Headers"] == "Retry-After"
    assert len(fake.calls(method, path)) == ATTEMPTS


def test_an_html_page_instead_of_power_bis_json_is_503_unavailable(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    fake.fault("POST", "GenerateToken", status=200, body=OUTAGE_PAGE)

    assert answer(call(REPORT)) == (503, "unavailable", "30")
    assert call(REPORT).status_code == 200  # the next request mints


@pytest.mark.parametrize("status", [429, 500, 503])
def test_a_retry_after_date_from_power_bi_is_counted_on_the_injected_clock(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, status: int
) -> None:
    clock.wall -= DAY  # the function's clock is a day behind the system's: only the injected one may count
    when = formatdate(clock.now() + 120, usegmt=True)
    fake.fault("POST", "GenerateToken", status=status, headers={"Retry-After": when}, times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (429 if status == 429 else 503, "throttled" if status == 429 else "unavailable", "120")
    # 120 s is past the request's deadline: no wait, one call, the date handed on.
    assert clock.sleeps == [] and len(fake.calls("POST", "GenerateToken")) == 1


def test_a_retry_after_date_is_waited_for_when_it_fits_the_deadline(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    clock.wall += DAY
    fake.fault("POST", "GenerateToken", status=503, headers={"Retry-After": formatdate(clock.now() + 4, usegmt=True)})

    response = call(REPORT)

    assert response.status_code == 200
    assert clock.sleeps == [pytest.approx(4, abs=1)]  # HTTP dates have whole seconds


def test_a_retry_after_date_from_entra_is_counted_on_the_injected_clock(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    clock.wall -= DAY
    entra_unavailable(fake, status=503, retry_after=formatdate(clock.now() + 90, usegmt=True), times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (503, "signin_unavailable", "90")
    assert len(fake.token_calls) == 1  # 90 s is past the deadline: not waited for


@pytest.mark.parametrize("status", [200, 403, 404, 500, 502])
def test_an_html_page_from_the_token_endpoint_is_503_signin_unavailable(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, production: dict[str, str], status: int
) -> None:
    entra_html_page(fake, status=status, times=ATTEMPTS)

    response = call(REPORT)

    assert answer(response) == (503, "signin_unavailable", "5")
    assert not any(word in message(response) for word in TELLTALES)
    assert fake.token_calls  # the page really came from the token endpoint
    assert not fake.calls(path_contains="/v1.0/")


def test_an_html_page_with_its_own_retry_after_passes_it_on(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    entra_html_page(fake, status=403, retry_after="12")

    assert answer(call(REPORT)) == (503, "signin_unavailable", "12")


def test_after_an_html_page_the_next_sign_in_succeeds(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    entra_html_page(fake, status=200)

    assert answer(call(REPORT))[:2] == (503, "signin_unavailable")
    assert call(REPORT).status_code == 200  # nothing was cached as a configuration error


# --- 4xx answers say what is wrong with the request, in production too -----------------------------------


def swa(user: str, roles: tuple[str, ...] = ()) -> dict[str, str]:
    principal = {"identityProvider": "aad", "userId": "1", "userDetails": user, "userRoles": ["authenticated", *roles]}
    return {"x-ms-client-principal": base64.b64encode(json.dumps(principal).encode()).decode()}


REPORTS_51 = ",".join(f"{i:08x}-0000-4000-8000-000000000000" for i in range(51))
FOUR_XX: list[tuple[str, str, dict[str, str], dict[str, str], dict[str, str], int, str]] = [
    # (case, path, params, settings, headers, status, what the message must say)
    ("not a GUID", "/api/embed/reports/not-a-guid", {}, {}, {}, 400, 'report id "not-a-guid" is not a GUID'),
    ("nth id", "/api/embed/reports", {"ids": f"{REPORT_ID},nope"}, {}, {}, 400, '"nope" (the 2nd of ids)'),
    ("tile id", f"/api/embed/dashboards/{DASHBOARD_ID}/tiles/x1", {}, {}, {}, 400, 'tile id "x1" is not a GUID'),
    ("access level", REPORT, {"accessLevel": "Bogus"}, {}, {}, 400, 'View or Edit, not "Bogus"'),
    ("51 ids", "/api/embed/reports", {"ids": REPORTS_51}, {}, {}, 400, "from 1 to 50 report ids"),
    ("edit a dashboard", f"/api/embed/dashboards/{DASHBOARD_ID}", {"accessLevel": "Edit"}, {}, {}, 400, "needs a"),
    ("workspace", REPORT, {"workspaceId": OTHER_WORKSPACE_ID}, {}, {}, 403, f"Workspace {OTHER_WORKSPACE_ID} is not"),
    (
        "report",
        f"/api/embed/reports/{OTHER_REPORT_ID}",
        {},
        {"POWERBI_ALLOWED_REPORTS": REPORT_ID},
        {},
        403,
        f"report {OTHER_REPORT_ID} is not allowed",
    ),
    ("edit", REPORT, {"accessLevel": "Edit"}, {}, {}, 403, "Editing and creating reports is not allowed"),
    ("create", f"/api/embed/datasets/{DATASET_ID}/create", {}, {}, {}, 403, "Editing and creating reports"),
    (
        "unknown",
        "/api/embed/reports/0d5b6c43-9f8e-4a51-b2c7-3e4f5a6b7c8d",
        {},
        {},
        {},
        404,
        "no report 0d5b6c43-9f8e-4a51-b2c7-3e4f5a6b7c8d in workspace",
    ),
    (
        "rls name",
        REPORT,
        {},
        {"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region", "WEBSITE_AUTH_ENABLED": "True"},
        swa("alice smith@contoso.com"),
        400,
        "name cannot be used for row-level security",
    ),
    (
        "rls role",
        f"/api/embed/reports/{RLS_REPORT_ID}",
        {},
        {
            "POWERBI_RLS_USERNAME_SOURCE": "principal",
            "POWERBI_RLS_ROLES_SOURCE": "principal",
            "POWERBI_RLS_ALLOWED_ROLES": "Region",
            "WEBSITE_AUTH_ENABLED": "True",
        },
        swa("alice@contoso.com", ("Admin",)),
        403,
        "requires a row-level-security role",
    ),
    (
        "provider",
        REPORT,
        {},
        {"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region", "WEBSITE_AUTH_ENABLED": "True"},
        {"x-ms-client-principal": base64.b64encode(b'{"identityProvider":"github","userDetails":"a"}').decode()},
        401,
        "sign in with the organisation's account",
    ),
]


@pytest.mark.parametrize(
    ("path", "params", "settings", "headers", "status", "says"), [c[1:] for c in FOUR_XX], ids=[c[0] for c in FOUR_XX]
)
def test_a_4xx_in_production_says_what_is_wrong_and_names_no_setting(
    call: Callable[..., Any],
    fake: FakeUpstream,
    production: dict[str, str],
    path: str,
    params: dict[str, str],
    settings: dict[str, str],
    headers: dict[str, str],
    status: int,
    says: str,
) -> None:
    production.update(settings)

    response = call(path, headers, **params)

    assert response.status_code == status
    assert says in message(response)
    assert not any(word in message(response) for word in TELLTALES), message(response)
    assert not fake.calls("POST", "GenerateToken")  # refused before anything was minted


def test_with_details_on_a_4xx_adds_the_operators_hint(call: Callable[..., Any], env: dict[str, str]) -> None:
    response = call(REPORT, accessLevel="Edit")

    assert response.status_code == 403
    assert "Editing and creating reports is not allowed" in message(response)
    assert "POWERBI_ALLOW_EDIT" in message(response)


def test_the_log_line_of_a_4xx_names_the_setting_that_decided(
    call: Callable[..., Any], production: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING", logger="shared.responses"):
        call(REPORT, accessLevel="Edit")

    (line,) = [r.getMessage() for r in caplog.records if "answered 403" in r.getMessage()]
    assert "POWERBI_ALLOW_EDIT" in line


def test_a_5xx_in_production_stays_generic(call: Callable[..., Any], production: dict[str, str]) -> None:
    del production["POWERBI_USERNAME"]

    response = call(REPORT)

    assert answer(response)[:2] == (500, "configuration_error")
    assert message(response) == "The function is not configured correctly."
