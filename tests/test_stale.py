"""Serve what is still valid when upstream fails (issue 17, section 2): a catalog read before keeps serving
for POWERBI_CATALOG_STALE_SECONDS when re-reading it fails for a transient fault, and a cached token still
valid for two more minutes is handed out when minting fails for one; never after a 401, 403 or 404 from
Power BI, never an expired token, and the log line says ``stale``."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime
from typing import Any

import pytest

from emulator import REPORT_ID, FakeUpstream
from tests.conftest import FakeClock

PATH = f"/api/embed/reports/{REPORT_ID}"
FOREVER = 1000  # a fault answered to every try of every request in the test


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def embed_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shared.embed" and r.getMessage().startswith("embed ")]


# -- the catalog ---------------------------------------------------------------------------------------


def test_a_cached_token_is_served_while_the_catalog_cannot_be_re_read(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    first = body(call(PATH))
    clock.advance(601)  # the catalog is past POWERBI_CATALOG_TTL_SECONDS; the token is not
    fake.fault("GET", "/reports", status=503, times=FOREVER)
    before = len(fake.calls("POST", "GenerateToken"))

    response = call(PATH)

    assert response.status_code == 200
    assert body(response)["accessToken"] == first["accessToken"]
    assert len(fake.calls("POST", "GenerateToken")) == before
    assert any("cache catalog: serving a stale value" in r.getMessage() for r in caplog.records)


@pytest.mark.parametrize("status", [429, 500, 502, 503, 504])
def test_every_transient_fault_of_a_list_call_serves_the_stale_catalog(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, status: int
) -> None:
    call(PATH)
    clock.advance(601)
    fake.fault("GET", "/reports", status=status, times=FOREVER, headers={"Retry-After": "1"})
    assert call(PATH).status_code == 200


def test_the_stale_catalog_is_served_for_at_most_the_stale_seconds(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str], clock: FakeClock
) -> None:
    env["POWERBI_CATALOG_STALE_SECONDS"] = "60"
    call(PATH)
    clock.advance(600 + 61)
    fake.fault("GET", "/reports", status=503, times=FOREVER)
    response = call(PATH)
    assert response.status_code == 503


@pytest.mark.parametrize(("status", "code"), [(403, "powerbi_error"), (404, "not_found"), (401, "powerbi_error")])
def test_never_after_power_bi_refused_or_lost_the_list(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, status: int, code: str
) -> None:
    call(PATH)
    clock.advance(601)
    fake.fault("GET", "/reports", status=status, times=FOREVER)
    response = call(PATH)
    assert body(response)["error"]["code"] == code
    fake.clear_faults()
    fake.fault("GET", "/reports", status=503, times=FOREVER)
    assert call(PATH).status_code == 503  # what was kept went with the refusal


# -- the token -------------------------------------------------------------------------------------------


def test_a_token_still_valid_is_handed_out_when_minting_fails(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "shared.embed")
    first = body(call(PATH))
    clock.advance(51 * 60)  # 9 minutes left: under the 10-minute minimum, so a new one is due
    fake.fault("POST", "GenerateToken", status=503, times=FOREVER)

    response = call(PATH)

    assert response.status_code == 200
    answer = body(response)
    assert (answer["accessToken"], answer["expiration"]) == (first["accessToken"], first["expiration"])
    assert "cache=stale" in embed_lines(caplog)[-1]
    assert any("cache embed: serving a stale value" in r.getMessage() for r in caplog.records)


def test_an_entra_outage_serves_the_token_still_valid(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "clock", clock.now)  # the Entra token expires in the test's time
    first = body(call(PATH))
    clock.advance(51 * 60)  # the Entra token too short for a new embed token: a sign-in is needed
    fake.fault("POST", "/oauth2/v2.0/token", status=503, times=FOREVER)
    response = call(PATH)
    assert response.status_code == 200
    assert body(response)["accessToken"] == first["accessToken"]


def test_never_a_token_with_less_than_two_minutes_left(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    first = body(call(PATH))
    expires = datetime.fromisoformat(first["expiration"].replace("Z", "+00:00")).timestamp()
    clock.advance(expires - clock.now() - 119)
    fake.fault("*", "/v1.0/", status=503, times=FOREVER)
    response = call(PATH)
    assert response.status_code == 503
    assert "Retry-After" in response.headers


@pytest.mark.parametrize(("status", "code"), [(401, "powerbi_error"), (403, "powerbi_error"), (404, "not_found")])
def test_never_after_generate_token_was_refused(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, status: int, code: str
) -> None:
    call(PATH)
    clock.advance(51 * 60)
    fake.fault("POST", "GenerateToken", status=status, times=FOREVER)
    assert body(call(PATH))["error"]["code"] == code
    fake.clear_faults()
    fake.fault("POST", "GenerateToken", status=503, times=FOREVER)
    assert call(PATH).status_code == 503  # the old token went with the refusal
