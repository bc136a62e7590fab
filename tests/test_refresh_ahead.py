"""Refresh ahead (issue 17, section 1): a token near its end is still handed out, and the first request that
finds it so starts one re-mint of its key in the background; a key asked at least once per refresh window
never makes a request wait for sign-in or GenerateToken after its first request.

The emulator runs on the test's clock (``fake.clock``), so tokens live and expire in simulated time, and
background work runs when the test says (``ManualBackground``): "never delays the answer" is then exact.
"""

from __future__ import annotations

import base64
import logging
import re
import threading

import pytest

from emulator import REPORT_ID, FakeUpstream
from emulator.entra import emulator_session
from shared.background import BackgroundPool
from shared.embed import EmbedService
from shared.errors import ConfigurationError
from shared.settings import Settings
from tests.conftest import FakeClock, ManualBackground
from tests.redis_server import RedisServer

KEY = base64.b64encode(bytes(range(32))).decode()


@pytest.fixture
def simulated(fake: FakeUpstream, clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> FakeUpstream:
    """The emulator on the test's clock: Entra and embed tokens expire in simulated time."""
    monkeypatch.setattr(fake, "clock", clock.now)
    return fake


def service(
    env: dict[str, str], clock: FakeClock, fake: FakeUpstream, background: ManualBackground, **settings: str
) -> EmbedService:
    return EmbedService.create(
        Settings.from_env({**env, **settings}),
        clock=clock,
        session=emulator_session(fake.base_url),
        background=background,
    )


def outcomes(caplog: pytest.LogCaptureFixture) -> list[tuple[str, int]]:
    """(cache outcome, upstream calls) of each request's log line, in order."""
    found = []
    for record in caplog.records:
        match = re.search(r"cache=(\w+) upstream_calls=(\d+)", record.getMessage())
        if record.name == "shared.embed" and record.getMessage().startswith("embed report") and match:
            found.append((match.group(1), int(match.group(2))))
    return found


def test_a_key_asked_once_per_window_never_waits_after_its_first_request(
    simulated: FakeUpstream, env: dict[str, str], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "shared.embed")
    simulated.access_token_lifetime = 75 * 60  # Entra tokens shorter than two embed tokens' lives
    background = ManualBackground()
    svc = service(env, clock, simulated, background)
    tokens = set()
    for _ in range(3 * 12):  # three hours, a request every five minutes (the window is ten)
        tokens.add(svc.embed("report", REPORT_ID).token.token_id)
        background.run()  # after the answer: what it queued runs off the request path
        clock.advance(5 * 60)

    seen = outcomes(caplog)
    assert seen[0][0] == "miss"
    assert seen[1:] == [("hit", 0)] * (len(seen) - 1)  # never waited for an upstream call again
    minted = simulated.calls("POST", "GenerateToken")
    assert len(minted) == len(tokens) >= 4  # re-minted ahead, each new token handed out
    # The Entra token (75 min) was renewed in the background step whenever it was too short.
    assert len(simulated.token_calls) >= 3


def test_one_re_mint_per_key_and_the_answer_never_waits_for_it(
    simulated: FakeUpstream, env: dict[str, str], clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "shared.embed")
    background = ManualBackground()
    svc = service(env, clock, simulated, background, POWERBI_CATALOG_TTL_SECONDS="86400")  # the token alone
    first = svc.embed("report", REPORT_ID)
    background.run()
    clock.advance(41 * 60)  # 19 minutes left: under 10 (minimum) + 10 (refresh ahead)

    due = [svc.embed("report", REPORT_ID) for _ in range(3)]
    assert all(e.token == first.token for e in due)  # still handed out
    assert len(background.jobs) == 1
    svc.embed("report", REPORT_ID)
    assert len(background.jobs) == 1  # one re-mint per key, however many requests find it due
    assert len(simulated.calls("POST", "GenerateToken")) == 1  # nothing called before the answers

    background.run()
    assert len(simulated.calls("POST", "GenerateToken")) == 2
    renewed = svc.embed("report", REPORT_ID)
    assert renewed.token.token_id != first.token.token_id
    assert renewed.token.expires_at > first.token.expires_at
    assert outcomes(caplog)[1:] == [("hit", 0)] * 5


def test_refresh_ahead_off(simulated: FakeUpstream, env: dict[str, str], clock: FakeClock) -> None:
    background = ManualBackground()
    svc = service(env, clock, simulated, background, POWERBI_REFRESH_AHEAD_MINUTES="0")
    svc.embed("report", REPORT_ID)
    background.run()
    clock.advance(49 * 60)
    svc.embed("report", REPORT_ID)
    assert [job for job in background.jobs] == []
    assert len(simulated.calls("POST", "GenerateToken")) == 1


def test_the_fleet_re_mints_a_key_once(
    simulated: FakeUpstream, env: dict[str, str], clock: FakeClock, redis_server: RedisServer
) -> None:
    shared = {"POWERBI_CACHE_URL": redis_server.url, "POWERBI_CACHE_ENCRYPTION_KEY": KEY}
    one_jobs, two_jobs = ManualBackground(), ManualBackground()
    one = service(env, clock, simulated, one_jobs, **shared)
    two = service(env, clock, simulated, two_jobs, **shared)
    first = one.embed("report", REPORT_ID)
    assert two.embed("report", REPORT_ID).token == first.token  # from Redis
    one_jobs.run(), two_jobs.run()
    clock.advance(41 * 60)

    one.embed("report", REPORT_ID), two.embed("report", REPORT_ID)  # both find it due
    one_jobs.run()
    two_jobs.run()  # finds the other instance's new token in Redis: no GenerateToken of its own

    assert len(simulated.calls("POST", "GenerateToken")) == 2
    assert one.embed("report", REPORT_ID).token == two.embed("report", REPORT_ID).token != first.token


def test_the_pool_drops_when_full_and_never_blocks(caplog: pytest.LogCaptureFixture) -> None:
    pool = BackgroundPool(workers=1, queue_size=1)
    started, release, done = threading.Event(), threading.Event(), threading.Event()

    def blocking() -> None:
        started.set()
        release.wait(10)

    pool.submit(blocking)
    assert started.wait(10)  # the one worker is busy
    assert pool.submit(done.set)  # the queue's one place
    assert not pool.submit(lambda: None)  # dropped, at once
    assert "background work dropped" in caplog.text
    release.set()
    assert done.wait(10)


@pytest.mark.parametrize("value", ["31", "-1", "ten"])
def test_the_setting_is_checked_by_name(env: dict[str, str], value: str) -> None:
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env({**env, "POWERBI_REFRESH_AHEAD_MINUTES": value})
    assert "POWERBI_REFRESH_AHEAD_MINUTES must be a whole number from 0 to 30" in raised.value.message
