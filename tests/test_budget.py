"""A budget for new tokens (issue 17, section 3): at most POWERBI_MAX_NEW_TOKENS_PER_MINUTE GenerateToken
calls a minute (per instance, or for the fleet with the shared cache) and POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE
per signed-in principal id; over it, a request that needs a new token is ``429 throttled`` with Retry-After
(seconds to the next free slot) and no upstream call; cache hits never count; background refreshes of keys
already cached come first and count."""

from __future__ import annotations

import base64
import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from emulator import DATASET_ID, REPORT_ID, WORKSPACE_ID, FakeUpstream
from emulator import catalog as cat
from emulator.entra import emulator_session
from shared.embed import EmbedService
from shared.errors import ConfigurationError, Throttled
from shared.identity import principal_id
from shared.settings import Settings
from tests.conftest import FakeClock, ManualBackground
from tests.redis_server import RedisServer

KEY = base64.b64encode(bytes(range(32))).decode()


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def publish(fake: FakeUpstream, count: int) -> list[str]:
    """``count`` plain reports in the workspace (REPORT_ID first)."""
    ws = cat.workspace(fake.catalog, WORKSPACE_ID)
    assert ws is not None
    extra = [f"00000000-0000-4000-8000-{n:012d}" for n in range(1, count)]
    ws["reports"] += [{"id": r, "name": f"Report {r[-2:]}", "datasetId": DATASET_ID} for r in extra]
    return [REPORT_ID, *extra]


def subsets(reports: list[str]) -> list[str]:
    return [",".join(c) for n in range(1, len(reports) + 1) for c in itertools.combinations(reports, n)]


def test_63_subsets_in_a_minute_make_at_most_the_budget_of_generate_token(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_MAX_NEW_TOKENS_PER_MINUTE"] = "10"
    every = subsets(publish(fake, 6))
    assert len(every) == 63
    answers = [call("/api/embed/reports", ids=ids) for ids in every]

    assert [a.status_code for a in answers].count(200) == 10
    refused = [a for a in answers if a.status_code == 429]
    assert len(refused) == 53
    assert {body(a)["error"]["code"] for a in refused} == {"throttled"}
    assert {a.headers["Retry-After"] for a in refused} == {"60"}  # all in the same instant
    assert len(fake.calls("POST", "GenerateToken")) == 10


def test_retry_after_is_the_time_to_the_next_free_slot_and_hits_never_count(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str], clock: FakeClock
) -> None:
    env["POWERBI_MAX_NEW_TOKENS_PER_MINUTE"] = "2"
    reports = publish(fake, 3)
    assert call("/api/embed/reports", ids=reports[0]).status_code == 200
    clock.advance(15)
    assert call("/api/embed/reports", ids=reports[1]).status_code == 200
    clock.advance(10)
    upstream = len(fake.requests)

    refused = call("/api/embed/reports", ids=reports[2])
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "35")  # the first leaves at 60 s
    assert len(fake.requests) == upstream  # no upstream call at all
    assert all(call("/api/embed/reports", ids=r).status_code == 200 for r in reports[:2] * 5)  # hits
    clock.advance(35)
    assert call("/api/embed/reports", ids=reports[2]).status_code == 200


def test_per_user_budget_by_the_principal_the_platform_vouches_for(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env.update({"POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE": "2", "WEBSITE_AUTH_ENABLED": "True"})
    reports = publish(fake, 4)
    alice = {"X-MS-CLIENT-PRINCIPAL-ID": "8e1c4f0a-alice", "X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com"}
    bob = {"X-MS-CLIENT-PRINCIPAL-ID": "2b7d9a3c-bob", "X-MS-CLIENT-PRINCIPAL-NAME": "bob@contoso.com"}

    assert [call("/api/embed/reports", alice, ids=r).status_code for r in reports[:3]] == [200, 200, 429]
    assert call("/api/embed/reports", bob, ids=reports[2]).status_code == 200
    assert call("/api/embed/reports", alice, ids=reports[2]).status_code == 200  # now a cache hit


def test_without_the_platforms_sign_in_a_principal_header_is_not_believed(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE"] = "1"
    reports = publish(fake, 3)
    forged = {"X-MS-CLIENT-PRINCIPAL-ID": "victim"}
    assert [call("/api/embed/reports", forged, ids=r).status_code for r in reports] == [200, 200, 200]


def test_background_refreshes_count_and_come_first(
    fake: FakeUpstream, env: dict[str, str], clock: FakeClock, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(fake, "clock", clock.now)
    reports = publish(fake, 3)
    background = ManualBackground()
    service = EmbedService.create(
        Settings.from_env({**env, "POWERBI_MAX_NEW_TOKENS_PER_MINUTE": "1"}),
        clock=clock,
        session=emulator_session(fake.base_url),
        background=background,
    )
    service.embed("reports", reports[:1])
    background.run()
    clock.advance(41 * 60)  # the first token is due for its refresh
    service.embed("reports", reports[1:2])  # spends this minute's budget
    service.embed("reports", reports[:1])  # finds its token due: queues the refresh
    background.run()
    assert len(fake.calls("POST", "GenerateToken")) == 3  # the refresh was not refused
    with pytest.raises(Throttled) as raised:
        service.embed("reports", reports[2:3])
    assert raised.value.status == 429 and 1 <= int(raised.value.headers["Retry-After"]) <= 60


def test_with_the_shared_cache_the_budget_is_the_fleets(
    fake: FakeUpstream, env: dict[str, str], clock: FakeClock, redis_server: RedisServer
) -> None:
    settings = Settings.from_env(
        {
            **env,
            "POWERBI_MAX_NEW_TOKENS_PER_MINUTE": "3",
            "POWERBI_CACHE_URL": redis_server.url,
            "POWERBI_CACHE_ENCRYPTION_KEY": KEY,
        }
    )
    one, two = (
        EmbedService.create(
            settings, clock=clock, session=emulator_session(fake.base_url), background=ManualBackground()
        )
        for _ in range(2)
    )
    reports = publish(fake, 4)
    one.embed("reports", reports[:1]), one.embed("reports", reports[1:2]), two.embed("reports", reports[2:3])
    with pytest.raises(Throttled):
        two.embed("reports", reports[3:4])
    assert len(fake.calls("POST", "GenerateToken")) == 3
    names = redis_server.cli("--scan").split()
    assert any(":budget:" in n for n in names) and not any("overall" in n for n in names)  # names hashed


@pytest.mark.parametrize(
    ("name", "value", "problem"),
    [
        ("POWERBI_MAX_NEW_TOKENS_PER_MINUTE", "0", "POWERBI_MAX_NEW_TOKENS_PER_MINUTE must be a whole number from 1"),
        ("POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE", "x", "POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE must be"),
    ],
)
def test_the_settings_are_checked_by_name(env: dict[str, str], name: str, value: str, problem: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({**env, name: value})
    assert problem in raised.value.message


def test_the_principal_id_comes_from_either_platform_format_and_only_when_vouched_for() -> None:
    swa = base64.b64encode(json.dumps({"identityProvider": "aad", "userId": "u-42", "userDetails": "a"}).encode())
    assert principal_id({"X-MS-CLIENT-PRINCIPAL": swa.decode()}, True) == "u-42"
    assert principal_id({"X-MS-CLIENT-PRINCIPAL-ID": "oid-7"}, True) == "oid-7"
    assert principal_id({"X-MS-CLIENT-PRINCIPAL-ID": "oid-7"}, False) is None
    assert principal_id({"X-MS-CLIENT-PRINCIPAL": "not base64 json"}, True) is None
    assert principal_id({}, True) is None
