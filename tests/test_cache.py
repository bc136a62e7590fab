"""Bounded caches and canonical keys: one token per set of items, the identity only where a dataset needs it,
at most POWERBI_CACHE_MAX_TOKENS kept, expired tokens never served, and the seam for a shared second level."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from emulator import DATASET_ID, PAGINATED_REPORT_ID, REPORT_ID, RLS_REPORT_ID, WORKSPACE_ID, FakeUpstream
from emulator import catalog as cat
from emulator.entra import emulator_session
from shared.cache import Cache, Lifetime, Source
from shared.embed import EmbedService
from shared.errors import NotFound
from shared.settings import Settings
from tests.conftest import FakeClock


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def user(n: int) -> dict[str, str]:
    return {"X-MS-CLIENT-PRINCIPAL-NAME": f"user{n}@contoso.com", "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}


@pytest.fixture
def rls(env: dict[str, str]) -> dict[str, str]:
    env.update(
        {"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region", "WEBSITE_AUTH_ENABLED": "True"}
    )
    return env


T = TypeVar("T")


class DictStore:
    """A hand-written shared level: what Redis would hold (unsealed), by "<kind>:<key text>"; no fleet lock."""

    def __init__(self) -> None:
        self.values: dict[str, bytes] = {}
        self.ttls: dict[str, float] = {}

    def get(self, kind: str, key: str) -> bytes | None:
        return self.values.get(key)

    def put(self, kind: str, key: str, value: bytes, ttl_seconds: float) -> bool:
        self.values[key] = value
        self.ttls[key] = ttl_seconds
        return True

    def once(
        self,
        kind: str,
        key: str,
        create: Callable[[], T],
        read: Callable[[], T | None],
        remaining: Callable[[], float],
    ) -> tuple[T, Source]:
        return create(), "created"


class Key(str):
    def text(self) -> str:
        return str(self)


# --- canonical keys -----------------------------------------------------------------------------------------


def test_the_same_reports_in_any_order_case_or_repeats_are_one_token(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    three = [REPORT_ID, PAGINATED_REPORT_ID, _plain_third(fake)]
    orders = [",".join(order) for order in itertools.permutations(three)]
    orders += [",".join(three).upper(), ",".join([*three, three[0]])]

    answers = [body(call("/api/embed/reports", ids=ids)) for ids in orders]

    assert len({a["accessToken"] for a in answers}) == 1
    assert len(fake.calls("POST", "GenerateToken")) == 1
    # Each answer lists the reports in the order that request asked for them.
    assert [[i["id"] for i in a["items"]] for a in answers[:6]] == [list(o) for o in itertools.permutations(three)]


def _plain_third(fake: FakeUpstream) -> str:
    """A third report on the plain dataset, published for the test."""
    third = "00000000-0000-4000-8000-000000000003"
    ws = cat.workspace(fake.catalog, WORKSPACE_ID)
    assert ws is not None
    ws["reports"].append({"id": third, "name": "Third", "datasetId": DATASET_ID})
    return third


def test_a_plain_report_for_fifty_signed_in_users_is_one_generate_token(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    tokens = {body(call(f"/api/embed/reports/{REPORT_ID}", user(n)))["accessToken"] for n in range(50)}

    assert len(tokens) == 1
    assert [b.json for b in fake.calls("POST", "GenerateToken")] == [
        {"reports": [{"id": REPORT_ID}], "datasets": [{"id": DATASET_ID}]}
    ]


def test_an_rls_report_is_one_token_per_user_with_that_users_identity(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    answers = [body(call(f"/api/embed/reports/{RLS_REPORT_ID}", user(n))) for n in (1, 2, 1)]

    assert answers[0]["accessToken"] == answers[2]["accessToken"] != answers[1]["accessToken"]
    sent = [b.json["identities"] for b in fake.calls("POST", "GenerateToken")]
    assert [[i["username"] for i in identities] for identities in sent] == [
        ["user1@contoso.com"],
        ["user2@contoso.com"],
    ]


# --- bounds and expiry --------------------------------------------------------------------------------------


def test_at_most_max_tokens_are_kept_least_recently_used_first(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    rls["POWERBI_CACHE_MAX_TOKENS"] = "5"
    path = f"/api/embed/reports/{RLS_REPORT_ID}"
    for n in range(8):
        call(path, user(n))
    minted = len(fake.calls("POST", "GenerateToken"))

    last = call(path, user(7))  # the most recent user: a hit
    assert len(fake.calls("POST", "GenerateToken")) == minted
    first = call(path, user(0))  # the first user was evicted: a new token

    assert last.status_code == first.status_code == 200
    assert len(fake.calls("POST", "GenerateToken")) == minted + 1
    assert fake.calls("POST", "GenerateToken")[-1].json["identities"][0]["username"] == "user0@contoso.com"


def test_an_expired_token_is_dropped_never_served(
    fake: FakeUpstream, env: dict[str, str], make_service: Callable[[dict[str, str]], EmbedService], clock: FakeClock
) -> None:
    service = make_service(env)
    first = service.embed("report", REPORT_ID)
    assert service.embed("report", REPORT_ID) == first
    clock.advance(51 * 60)  # 9 minutes left: under the 10-minute minimum, so expired for the cache

    second = service.embed("report", REPORT_ID)
    assert second.token.token != first.token.token
    assert len(fake.calls("POST", "GenerateToken")) == 2


def test_cache_bound_expiry_and_lru_order(clock: FakeClock) -> None:
    cache: Cache[Key, float] = Cache("t", 3, Lifetime, clock=clock)
    loads: list[str] = []

    def get(key: str, life: float = 100) -> str:
        def load() -> float:
            loads.append(key)
            return clock.now() + life

        return cache.get_or_load(Key(key), load, lambda: 10)[1]

    assert [get(k) for k in "abc"] == ["miss"] * 3
    assert get("a") == "hit"  # a is now the most recently used
    get("d")
    assert [get(k) for k in "acd"] == ["hit"] * 3
    assert get("b") == "miss"  # b was least recently used: evicted when d came
    assert get("e", life=-1) == get("e", life=-1) == "miss"  # already expired: never kept
    clock.advance(101)
    assert [get(k) for k in "bcd"] == ["miss"] * 3
    assert loads == ["a", "b", "c", "d", "b", "e", "e", "b", "c", "d"]


def test_a_refused_value_counts_as_a_miss(clock: FakeClock) -> None:
    cache: Cache[Key, float] = Cache("t", 3, Lifetime, clock=clock)
    first, _ = cache.get_or_load(Key("k"), lambda: clock.now() + 100, lambda: 10)
    clock.advance(1)
    again, outcome = cache.get_or_load(Key("k"), lambda: clock.now() + 100, lambda: 10, accept=lambda v: v > first)
    assert (again, outcome) == (first + 1, "miss")


# --- the seam for a shared second level ---------------------------------------------------------------------


def test_a_shared_store_serves_a_second_worker_without_upstream_calls(
    fake: FakeUpstream, env: dict[str, str], clock: FakeClock
) -> None:
    store = DictStore()
    settings = Settings.from_env(env)
    one = EmbedService.create(settings, clock=clock, shared=store, session=emulator_session(fake.base_url))
    first = one.embed("report", REPORT_ID)
    upstream = len(fake.requests)
    assert any(k.startswith("embed:") for k in store.values)
    assert any(k.startswith("catalog:reports:") for k in store.values)
    embed_ttl = next(t for k, t in store.ttls.items() if k.startswith("embed:"))
    # Shared while it is worth keeping: the token's life less the two minutes a token served in place of a
    # failing GenerateToken must have left (the emulator issues in real time, a little after the test clock
    # was set: a few seconds of slack).
    assert 57 * 60 < embed_ttl <= 58 * 60 + 5

    two = EmbedService.create(
        settings, clock=clock, shared=store, session=emulator_session(fake.base_url)
    )  # another worker, same shared store
    second = two.embed("report", REPORT_ID)
    unknown = "00000000-0000-4000-8000-00000000abcd"
    with pytest.raises(NotFound):
        two.embed("report", unknown)  # answered from the shared catalog: still no call

    assert second == first
    assert len(fake.requests) == upstream
