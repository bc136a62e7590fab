"""Bounded caches and canonical keys: one token per set of items, the identity only where a dataset needs it,
at most POWERBI_CACHE_MAX_TOKENS kept, expired tokens never served, and the seam for a shared second level."""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable
from typing import Any

import pytest

from emulator import DATASET_ID, PAGINATED_REPORT_ID, REPORT_ID, RLS_REPORT_ID, WORKSPACE_ID, FakeUpstream
from emulator import catalog as cat
from emulator.entra import emulator_session
from shared.cache import TieredCache
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


class DictStore:
    """A hand-written shared store: what a Redis backend would hold, as JSON text."""

    def __init__(self) -> None:
        self.values: dict[str, str] = {}
        self.ttls: dict[str, float] = {}

    def get(self, key: str) -> dict[str, Any] | None:
        text = self.values.get(key)
        return None if text is None else json.loads(text)  # type: ignore[no-any-return]

    def put(self, key: str, value: dict[str, Any], ttl_seconds: float) -> None:
        self.values[key] = json.dumps(value)
        self.ttls[key] = ttl_seconds


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
    assert len(service.embeds) == 1
    clock.advance(51 * 60)  # 9 minutes left: under the 10-minute minimum, so expired for the cache

    assert len(service.embeds) == 0
    second = service.embed("report", REPORT_ID)
    assert second.token.token != first.token.token


def test_tiered_cache_bound_expiry_and_lru_order(clock: FakeClock) -> None:
    cache: TieredCache[str, float] = TieredCache("t", 3, lambda expires: expires, clock=clock)
    for key in "abc":
        cache.put(key, clock.now() + 100)
    assert cache.get("a") is not None  # a is now the most recently used
    cache.put("d", clock.now() + 100)

    assert [k for k in "abcd" if cache.get(k) is not None] == ["a", "c", "d"]  # b was least recently used
    cache.put("e", clock.now() - 1)  # already expired: not kept
    assert cache.get("e") is None
    clock.advance(101)
    assert [k for k in "acd" if cache.get(k) is not None] == []


# --- the seam for a shared second level ---------------------------------------------------------------------


def test_a_shared_store_serves_a_second_worker_without_upstream_calls(
    fake: FakeUpstream, env: dict[str, str], clock: FakeClock
) -> None:
    store = DictStore()
    settings = Settings.from_env(env)
    one = EmbedService.create(settings, clock=clock, store=store, session=emulator_session(fake.base_url))
    first = one.embed("report", REPORT_ID)
    upstream = len(fake.requests)
    assert any(k.startswith("embed:") for k in store.values)
    assert any(k.startswith("catalog:reports:") for k in store.values)
    embed_ttl = next(t for k, t in store.ttls.items() if k.startswith("embed:"))
    # The token's life less the minimum handed out (the emulator issues in real time, a little after the
    # test clock was set: a few seconds of slack).
    assert 49 * 60 < embed_ttl <= 50 * 60 + 5

    two = EmbedService.create(
        settings, clock=clock, store=store, session=emulator_session(fake.base_url)
    )  # another worker, same shared store
    second = two.embed("report", REPORT_ID)
    unknown = "00000000-0000-4000-8000-00000000abcd"
    with pytest.raises(NotFound):
        two.embed("report", unknown)  # answered from the shared catalog: still no call

    assert second == first
    assert len(fake.requests) == upstream
