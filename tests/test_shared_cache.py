"""The shared cache against a real redis-server: sealing, key names, the breaker, the fleet lock, the doctor.

Each test starts its own redis-server on a free loopback port (tests/redis_server.py) and
drives time with FakeClock; a test that needs Redis skips, with the install command, without it.
"""

from __future__ import annotations

import base64
import io
import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from emulator import CLIENT_ID, TENANT_ID, WORKSPACE_ID, FakeUpstream
from emulator.entra import emulator_session
from shared import doctor
from shared.cache import Cache, Codec, Lifetime
from shared.errors import ConfigurationError
from shared.settings import Settings
from shared.shared_cache import BREAKER_SECONDS, SharedCache, _is_credential_error, probe
from tests.conftest import REDIS_PASSWORD, FakeClock
from tests.redis_server import RedisServer, SlowProxy

KEY = base64.b64encode(bytes(range(32))).decode()
OTHER_KEY = base64.b64encode(bytes(range(1, 33))).decode()
RLS_USER = "rls-user-7q@contoso.com"
TOKEN = "H4sIAAAAembed-token-VERY-SECRET-91"
OTHER_CLIENT = "9b1d0e4c-77a1-4c8e-9f55-2f3d1a6b8c90"


def env(url: str, **extra: str) -> dict[str, str]:
    return {
        "POWERBI_AUTH_MODE": "ServicePrincipal",
        "POWERBI_TENANT_ID": TENANT_ID,
        "POWERBI_CLIENT_ID": CLIENT_ID,
        "POWERBI_CLIENT_SECRET": "s",
        "POWERBI_WORKSPACE_ID": WORKSPACE_ID,
        "POWERBI_CACHE_URL": url,
        "POWERBI_CACHE_ENCRYPTION_KEY": KEY,
        **extra,
    }


def cache_for(url: str, clock: FakeClock, **extra: str) -> SharedCache:
    # A second per call, not 100 ms: a loaded CI machine must not look like a slow Redis (the slow
    # Redis test sets the default back).
    extra = {"POWERBI_CACHE_TIMEOUT_MS": "1000", **extra}
    cache = SharedCache.create(Settings.from_env(env(url, **extra)), clock)
    assert cache is not None
    return cache


@dataclass(frozen=True)
class Token:
    value: str
    expires_at: float


class Key(str):
    def text(self) -> str:
        return str(self)


def tokens(shared: SharedCache, clock: FakeClock) -> Cache[Key, Token]:
    """A cache of tokens handed out until 10 minutes before they expire, on the shared level."""
    return Cache(
        "embed",
        10,
        lambda t: Lifetime(t.expires_at - 600),
        clock=clock,
        shared=shared,
        codec=Codec(lambda t: {"value": t.value, "expires_at": t.expires_at}, lambda d: Token(**d)),
    )


def warnings_of(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "shared.shared_cache" and r.levelno >= logging.WARNING]


# -- settings ---------------------------------------------------------------------------------


def test_without_a_url_there_is_no_shared_cache(clock: FakeClock) -> None:
    settings = Settings.from_env({k: v for k, v in env("").items() if k != "POWERBI_CACHE_ENCRYPTION_KEY"})
    assert settings.shared_cache is None
    assert SharedCache.create(settings, clock) is None


@pytest.mark.parametrize(
    ("changes", "problem"),
    [
        ({"POWERBI_CACHE_ENCRYPTION_KEY": ""}, "POWERBI_CACHE_ENCRYPTION_KEY is required when POWERBI_CACHE_URL"),
        ({"POWERBI_CACHE_ENCRYPTION_KEY": base64.b64encode(b"short").decode()}, "32 random bytes in base64"),
        ({"POWERBI_CACHE_ENCRYPTION_KEY": "not base64 at all!"}, "32 random bytes in base64"),
        ({"POWERBI_CACHE_URL": "http://cache.contoso.com:6379"}, "POWERBI_CACHE_URL must be redis:// or rediss://"),
        ({"POWERBI_CACHE_URL": "rediss://:pw@cache.contoso.com:10000/x"}, "POWERBI_CACHE_URL must be"),
        ({"POWERBI_CACHE_TIMEOUT_MS": "0"}, "POWERBI_CACHE_TIMEOUT_MS must be a whole number from 10 to 5000"),
        (
            {"POWERBI_CACHE_BREAKER_SECONDS": "-1"},
            "POWERBI_CACHE_BREAKER_SECONDS must be a whole number from 0 to 3600",
        ),
    ],
)
def test_cache_settings_are_checked_by_name_never_by_value(changes: dict[str, str], problem: str) -> None:
    values = env("rediss://:Pa55-in-url@cache.contoso.com:10000/0") | changes
    with pytest.raises(ConfigurationError) as raised:
        Settings.from_env(values)
    assert problem in raised.value.message
    for secret in ("Pa55-in-url", values["POWERBI_CACHE_ENCRYPTION_KEY"] or "-"):
        assert secret not in raised.value.message


def test_the_url_and_key_are_never_shown() -> None:
    settings = Settings.from_env(env("rediss://:Pa55-in-url@cache.contoso.com:10000"))
    assert settings.shared_cache is not None
    assert settings.shared_cache.timeout_seconds == 0.1
    assert not settings.shared_cache.uses_entra
    assert "Pa55" not in repr(settings) and KEY not in repr(settings)
    assert Settings.from_env(env("rediss://cache.contoso.com:10000")).shared_cache.uses_entra  # type: ignore[union-attr]


# -- entries ----------------------------------------------------------------------------------


def test_a_value_goes_in_sealed_and_comes_back(redis_server: RedisServer, clock: FakeClock) -> None:
    cache = cache_for(redis_server.url, clock)
    key = f"report\n{WORKSPACE_ID}\n{RLS_USER}"
    assert cache.get("embed", key) is None
    assert cache.put("embed", key, TOKEN.encode(), 60)
    assert cache.get("embed", key) == TOKEN.encode()

    (name,) = redis_server.cli("--scan").split()
    assert name.startswith("pbi:") and name.count(":") == 3 and ":embed:" in name
    raw = redis_server.cli("GET", name)
    for clear in (TOKEN, RLS_USER, "rls-user", WORKSPACE_ID, CLIENT_ID, TENANT_ID, KEY, REDIS_PASSWORD):
        assert clear not in name and clear not in raw
    assert 0 < int(redis_server.cli("PTTL", name)) <= 60_000  # it expires by itself


def test_nothing_is_stored_without_time_left(redis_server: RedisServer, clock: FakeClock) -> None:
    cache = cache_for(redis_server.url, clock)
    assert not cache.put("embed", "k", b"v", 0)
    assert redis_server.cli("DBSIZE").strip() == "0"


def test_a_corrupt_or_moved_entry_is_a_miss(
    redis_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = cache_for(redis_server.url, clock)
    cache.put("embed", "a", TOKEN.encode(), 60)
    cache.put("embed", "b", b"other", 60)
    name_a, name_b = cache.seal.key("embed", "a"), cache.seal.key("embed", "b")
    cache.client.set(name_b, cache.client.get(name_a))  # a copy under another key does not open
    assert cache.get("embed", "b") is None
    raw = bytearray(cache.client.get(name_a))
    raw[-1] ^= 1  # one bit flipped
    cache.client.set(name_a, bytes(raw))
    assert cache.get("embed", "a") is None
    cache.client.set(name_a, b"garbage")
    assert cache.get("embed", "a") is None
    assert cache.breaker.available  # a bad entry is not a Redis failure
    assert len(warnings_of(caplog)) == 3


def test_an_entry_in_an_unknown_layout_is_a_miss(
    redis_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache = cache_for(redis_server.url, clock)
    cache.put("embed", "embed:k", b'{"no": "token here"}', 60)
    value, outcome = tokens(cache, clock).get_or_load(Key("k"), lambda: Token("new", clock.now() + 3600), lambda: 20)
    assert (value.value, outcome) == ("new", "miss")
    assert "cache embed: unreadable shared entry ignored" in caplog.text


def test_two_apps_on_one_redis_share_nothing(redis_server: RedisServer, clock: FakeClock) -> None:
    mine = cache_for(redis_server.url, clock)
    other_client = cache_for(redis_server.url, clock, POWERBI_CLIENT_ID=OTHER_CLIENT)
    other_profile = cache_for(redis_server.url, clock, POWERBI_PROFILE_ID="0d9b6f3e-4c21-4e7a-8b5f-2a1c9e8d7f60")
    other_key = cache_for(redis_server.url, clock, POWERBI_CACHE_ENCRYPTION_KEY=OTHER_KEY)
    mine.put("embed", "k", TOKEN.encode(), 60)
    for other in (other_client, other_profile, other_key):
        assert other.seal.prefix != mine.seal.prefix
        assert other.get("embed", "k") is None
        other.client.set(other.seal.key("embed", "k"), mine.client.get(mine.seal.key("embed", "k")))
        assert other.get("embed", "k") is None  # even copied across, it does not open


# -- the circuit breaker ----------------------------------------------------------------------


def test_redis_gone_then_back(redis_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, "shared.shared_cache")
    cache = cache_for(redis_server.url, clock)
    assert cache.put("embed", "k", b"v", 600)
    redis_server.stop()
    assert cache.get("embed", "k") is None
    assert not cache.breaker.available
    assert cache.get("embed", "k") is None and not cache.put("embed", "k", b"v", 600)  # not even tried
    clock.advance(BREAKER_SECONDS)
    assert cache.get("embed", "k") is None  # tried again: still away, and no new line
    (gone,) = warnings_of(caplog)
    assert "shared cache (Redis) unavailable (ConnectionError" in gone and "trying again after 30 s" in gone

    redis_server.start()
    clock.advance(BREAKER_SECONDS)
    assert cache.put("embed", "k", b"again", 600)
    assert cache.get("embed", "k") == b"again"
    back = [r.getMessage() for r in caplog.records if r.levelno == logging.INFO]
    assert back == ["shared cache (Redis) is back: using it again"]
    assert len(warnings_of(caplog)) == 1


def test_a_slow_redis_is_given_up_on_quickly(
    redis_server: RedisServer, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    cache_for(redis_server.url, clock).put("embed", "k", b"v", 600)
    with SlowProxy(redis_server.port, delay=2.0) as proxy:
        cache = cache_for(proxy.url(redis_server.password), clock, POWERBI_CACHE_TIMEOUT_MS="100")
        started = time.monotonic()
        assert cache.get("embed", "k") is None
        assert time.monotonic() - started < 1.0  # about the 100 ms timeout, far from the 2 s answer
    assert not cache.breaker.available
    (line,) = warnings_of(caplog)
    assert "unavailable (TimeoutError" in line


def test_a_wrong_password_is_one_configuration_warning(
    tmp_path: Path, clock: FakeClock, caplog: pytest.LogCaptureFixture
) -> None:
    server = RedisServer(tmp_path, password="right-Pw-4411").start()
    try:
        cache = cache_for(server.url.replace("right-Pw-4411", "wrong-Pw-5522"), clock)
        for _ in range(3):
            assert cache.get("embed", "k") is None
            assert not cache.put("embed", "k", b"v", 60)
            clock.advance(BREAKER_SECONDS)
        (line,) = warnings_of(caplog)
        assert line.startswith("configuration: the shared cache (Redis) refused the function's credentials")
        assert "wrong-Pw" not in caplog.text and "right-Pw" not in caplog.text
        probe_ = probe(cache)
        assert not probe_.ok and "refused the credentials" in probe_.lines[0][1]
        assert cache_for(server.url, clock).put("embed", "k", b"v", 60)  # the right one works
    finally:
        server.stop()


def test_entra_refusals_count_as_credential_errors() -> None:
    from redis.auth.err import RequestTokenErr
    from redis.exceptions import AuthenticationError, ResponseError
    from redis.exceptions import ConnectionError as RedisConnectionError

    assert _is_credential_error(RequestTokenErr("no managed identity endpoint"))
    assert _is_credential_error(AuthenticationError("invalid username-password pair"))
    assert _is_credential_error(ResponseError("WRONGPASS invalid username-password pair or user is disabled."))
    assert not _is_credential_error(RedisConnectionError("Connection refused"))


def test_without_a_password_the_app_identity_signs_in(clock: FakeClock) -> None:
    """No password in the URL: redis-entraid's provider for the managed identity (no call until used)."""
    cache = cache_for(
        "rediss://cache.contoso.redis.azure.net:10000",
        clock,
        POWERBI_AUTH_MODE="ManagedIdentity",
        POWERBI_CACHE_TIMEOUT_MS="100",
    )
    provider = cache.client.connection_pool.connection_kwargs["credential_provider"]
    assert type(provider).__name__ == "EntraIdCredentialsProvider"
    assert cache.client.connection_pool.connection_kwargs["socket_timeout"] == 0.1


# -- the fleet lock ---------------------------------------------------------------------------


def test_the_lock_is_taken_once_released_by_its_owner_and_expires(redis_server: RedisServer, clock: FakeClock) -> None:
    one, two = cache_for(redis_server.url, clock), cache_for(redis_server.url, clock)
    token = one.acquire("embed", "k", 5)
    assert token is not None
    assert two.acquire("embed", "k", 5) is None
    assert not two.release("embed", "k", "not-the-owner")
    assert two.locked("embed", "k")
    (name,) = [n for n in redis_server.cli("--scan").split() if ":lock:" in n]
    assert 0 < int(redis_server.cli("PTTL", name)) <= 5000  # expires by itself if the owner dies
    assert one.release("embed", "k", token)
    assert not two.locked("embed", "k")
    assert two.acquire("embed", "k", 5) is not None


class HandOverClock(FakeClock):
    """A clock whose first wait lets 'another instance' finish its upstream call."""

    def __init__(self, on_sleep: list[object]) -> None:
        super().__init__()
        self.on_sleep = on_sleep

    def sleep(self, seconds: float) -> None:
        super().sleep(seconds)
        while self.on_sleep:
            action = self.on_sleep.pop()
            assert callable(action)
            action()


def test_a_waiter_reads_what_the_lock_owner_shares(redis_server: RedisServer) -> None:
    actions: list[object] = []
    clock = HandOverClock(actions)
    owner, waiter = cache_for(redis_server.url, clock), cache_for(redis_server.url, clock)
    lock = owner.acquire("embed", "embed:k", 20)
    assert lock is not None

    def owner_finishes() -> None:
        owner.put("embed", "embed:k", json.dumps({"value": TOKEN, "expires_at": clock.now() + 3600}).encode(), 600)
        owner.release("embed", "embed:k", lock)

    actions.append(owner_finishes)
    created: list[int] = []
    value, outcome = tokens(waiter, clock).get_or_load(
        Key("k"), lambda: created.append(1) or Token("mine", 0), lambda: 20
    )
    assert (value.value, outcome, created) == (TOKEN, "l2", [])


def test_a_waiter_whose_owner_never_shares_calls_upstream_itself_in_time(redis_server: RedisServer) -> None:
    clock = FakeClock()
    owner, waiter = cache_for(redis_server.url, clock), cache_for(redis_server.url, clock)
    assert owner.acquire("embed", "embed:k", 20) is not None  # and then dies
    deadline = clock.monotonic() + 20
    value, outcome = tokens(waiter, clock).get_or_load(
        Key("k"), lambda: Token("mine", clock.now() + 3600), lambda: deadline - clock.monotonic()
    )
    assert (value.value, outcome) == ("mine", "miss")
    assert deadline - clock.monotonic() >= 10 - 0.06  # half its time kept for its own call
    assert waiter.get("embed", "embed:k") is not None  # and shared for the others


def test_one_instance_creates_then_another_reads_from_redis(redis_server: RedisServer, clock: FakeClock) -> None:
    one, two = cache_for(redis_server.url, clock), cache_for(redis_server.url, clock)
    calls: list[str] = []

    def create() -> Token:
        calls.append("GenerateToken")
        return Token(TOKEN, clock.now() + 3600)

    assert tokens(one, clock).get_or_load(Key("k"), create, lambda: 20)[1] == "miss"
    value, outcome = tokens(two, clock).get_or_load(Key("k"), create, lambda: 20)
    assert (value.value, outcome, calls) == (TOKEN, "l2", ["GenerateToken"])
    assert not [n for n in redis_server.cli("--scan").split() if ":lock:" in n]  # released
    (entry,) = [n for n in redis_server.cli("--scan").split() if ":embed:" in n]
    assert 49 * 60_000 < int(redis_server.cli("PTTL", entry)) <= 50 * 60_000  # shared while handed out


def test_without_redis_a_load_still_answers(redis_server: RedisServer, clock: FakeClock) -> None:
    cache = cache_for(redis_server.url, clock)
    redis_server.stop()
    value, outcome = tokens(cache, clock).get_or_load(Key("k"), lambda: Token(TOKEN, clock.now() + 3600), lambda: 20)
    assert (value.value, outcome) == (TOKEN, "miss")


# -- the doctor's probe -----------------------------------------------------------------------


def test_the_probe_checks_reachability_and_a_round_trip(redis_server: RedisServer, clock: FakeClock) -> None:
    cache = cache_for(redis_server.url, clock)
    probe_ = probe(cache)
    assert probe_.ok and [ok for ok, _ in probe_.lines] == [True, True]
    assert redis_server.cli("DBSIZE").strip() == "0"  # it cleans up after itself
    redis_server.stop()
    probe_ = probe(cache)
    assert not probe_.ok and "cannot be reached" in probe_.lines[0][1]


def test_the_doctor_checks_the_shared_cache(fake: FakeUpstream, env: dict[str, str], redis_server: RedisServer) -> None:
    settings_env = {**env, "POWERBI_CACHE_URL": redis_server.url, "POWERBI_CACHE_ENCRYPTION_KEY": KEY}
    out = io.StringIO()
    assert doctor.main([], settings_env, out, emulator_session(fake.base_url)) == 0
    text = out.getvalue()
    assert f"Shared cache (redis://127.0.0.1:{redis_server.port}, a password)" in text
    assert "ok    POWERBI_CACHE_ENCRYPTION_KEY: 32 bytes, AES-256-GCM" in text
    assert "ok    reachable and authenticated (PING)" in text
    assert "ok    a sealed write and read round trip (AES-256-GCM)" in text
    assert "POWERBI_CACHE_URL = (set)" in text and "POWERBI_CACHE_ENCRYPTION_KEY = (set)" in text
    assert REDIS_PASSWORD not in text and KEY not in text


def test_the_doctor_warns_of_a_refused_password_and_still_passes(
    fake: FakeUpstream, env: dict[str, str], redis_server: RedisServer
) -> None:
    wrong = redis_server.url.replace(REDIS_PASSWORD, "wrong-Pw-0000")
    out = io.StringIO()
    settings_env = {**env, "POWERBI_CACHE_URL": wrong, "POWERBI_CACHE_ENCRYPTION_KEY": KEY}
    assert doctor.main([], settings_env, out, emulator_session(fake.base_url)) == 0
    text = out.getvalue()
    assert "warn  Redis refused the credentials: check the password in POWERBI_CACHE_URL" in text
    assert "fix: the function still works, without the shared cache" in text
    assert "wrong-Pw" not in text


def test_the_doctor_names_a_malformed_key(fake: FakeUpstream, env: dict[str, str], redis_server: RedisServer) -> None:
    out = io.StringIO()
    short = base64.b64encode(b"0123456789").decode()
    assert doctor.main([], {**env, "POWERBI_CACHE_URL": redis_server.url, "POWERBI_CACHE_ENCRYPTION_KEY": short}, out)
    assert "FAIL  POWERBI_CACHE_ENCRYPTION_KEY must be 32 random bytes in base64" in out.getvalue()


def test_an_entra_sign_in_redis_refuses_is_one_configuration_warning_not_a_failure(
    fake: FakeUpstream,
    redis_server: RedisServer,
    clock: FakeClock,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No password in the URL: redis-entraid gets a token from the app's identity endpoint (the emulator's,
    as App Service provides it) and Redis, which knows no such user, refuses it."""
    for name, value in fake.managed_identity_env().items():
        monkeypatch.setenv(name, value)
    url = f"redis://127.0.0.1:{redis_server.port}/0"
    cache = cache_for(url, clock, POWERBI_AUTH_MODE="ManagedIdentity")
    for _ in range(2):
        assert cache.get("embed", "k") is None
        assert not cache.put("embed", "k", b"v", 60)
        clock.advance(BREAKER_SECONDS)
    (line,) = warnings_of(caplog)
    assert line.startswith("configuration: the shared cache (Redis) refused the function's credentials")
    assert {call.query.get("resource") for call in fake.identity_calls} == {"https://redis.azure.com"}
    assert not probe(cache).ok
