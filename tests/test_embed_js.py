"""web/embed.js, the drop-in browser helper, in headless Chromium against the function and the emulator.

A bare test page, served by a real HTTP server next to embed.js and powerbi-client (links to web/'s copies),
imports the module and calls it. (Served, not routed: Chromium lets only a page from a loopback server fetch
from the loopback function.) the function runs
over real HTTP with CORS and function keys (``tests/browser.py``), and ``https://app.powerbi.com`` is the fake
embed page that records what powerbi-client sent it. Time-dependent cases drive the page's clock with
Playwright's ``page.clock`` (fake timers and Date, fast-forwarded): no sleeps. Tokens are the 8-second ones of
``short_tokens``, so every fetch gets a newly issued token from the emulator.
"""

from __future__ import annotations

import contextlib
import functools
import json
import threading
import time
from collections.abc import Callable, Iterator
from http.server import ThreadingHTTPServer
from typing import Any

import pytest

from emulator import PAGINATED_REPORT_ID, REPORT_ID, FakeUpstream
from tests.browser import (  # noqa: F401 - fixtures
    KEY,
    SDK,
    SKIP_WITHOUT_CHROMIUM,
    WEB,
    QuietFiles,
    api_fixture,
    browser_fixture,
    page_fixture,
    sent,
    short_tokens_fixture,
)

pytestmark = SKIP_WITHOUT_CHROMIUM

# The test page: embed.js's exports on window, every event it raises recorded, every fetch it makes counted
# with the page's (fake) time.
TEST_PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>embed.js test</title></head>
<body><div id="a" style="height:300px"></div><div id="b" style="height:300px"></div>
<script src="node_modules/powerbi-client/dist/powerbi.min.js"></script>
<script type="module">
import * as embedjs from "./embed.js";
window.embedjs = embedjs;
window.events = [];
for (const name of [embedjs.ERROR_EVENT, embedjs.TOKEN_EVENT]) {
  document.addEventListener(name, (e) => window.events.push(
    {name, target: e.target.id, detail: {...e.detail, message: e.detail.message}}));
}
window.fetches = [];
const realFetch = window.fetch.bind(window);
window.fetch = (url, init) => { window.fetches.push({url: String(url), at: Date.now()}); return realFetch(url, init); };
window.outcome = null;
window.run = (call) => call().then(
  (value) => { window.outcome = {ok: true}; window.result = value; },
  (error) => { window.outcome = {ok: false, name: error.name, code: error.code, message: error.message}; });
window.ready = true;
</script></body></html>"""


@pytest.fixture(name="web", scope="module")
def test_site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The test page beside web/embed.js and web/node_modules, on its own origin (the api fixture allows it)."""
    if not SDK.exists():
        pytest.fail(f"{SDK} is missing: run `npm ci --ignore-scripts` in web/ (make setup and .ci/run do it)")
    site = tmp_path_factory.mktemp("embed-test-site")
    (site / "embed-test.html").write_text(TEST_PAGE, encoding="utf-8")
    for name in ("embed.js", "node_modules"):
        (site / name).symlink_to(WEB / name)
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietFiles, directory=str(site)))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_port}"
    server.shutdown()
    server.server_close()


def open_test_page(page: Any, web: str) -> None:
    page.goto(f"{web}/embed-test.html")
    page.wait_for_function("window.ready === true")


def options(api: str, **extra: Any) -> dict[str, Any]:
    return {"endpoint": api, "headers": {"x-functions-key": KEY}, **extra}


def start_embed(page: Any, container: str, opts: dict[str, Any]) -> None:
    """Call embed() without waiting for it: window.outcome tells how it ended."""
    page.evaluate(f"void window.run(() => embedjs.embed(document.getElementById({container!r}), {json.dumps(opts)}))")


def embed_frame(page: Any, index: int = 0) -> Any:
    page.wait_for_function(f"document.querySelectorAll('iframe').length > {index}")
    handle = page.query_selector_all("iframe")[index]
    frame = handle.content_frame()
    frame.wait_for_function("window.received && window.received.length > 0")
    return frame


def embedded(page: Any, api: str, **extra: Any) -> tuple[Any, list[dict[str, Any]]]:
    """embed() a report in #a; returns its fake embed frame and the function's answers so far."""
    answers: list[dict[str, Any]] = []
    page.on("response", lambda r: answers.append(r.json()) if "/api/embed/" in r.url and r.ok else None)
    start_embed(page, "a", options(api, id=REPORT_ID, **extra))
    page.wait_for_function("window.outcome !== null")
    assert page.evaluate("window.outcome") == {"ok": True}
    frame = embed_frame(page)
    frame.wait_for_function("window.received.some((m) => m.url === '/report/load')")
    return frame, answers


def tokens_set(frame: Any) -> list[str]:
    return [m["body"] for m in sent(frame, "/report/token")]


def test_it_bootstraps_at_once_then_embeds_what_the_function_issued(
    page: Any, web: str, api: str, fake: FakeUpstream
) -> None:
    open_test_page(page, web)
    seen: list[str] = []
    page.on("request", lambda r: seen.append("frame opened") if r.url.startswith("https://app.powerbi.com/") else None)
    page.on("response", lambda r: seen.append("token answered") if "/api/embed/" in r.url else None)

    with page.expect_response(lambda r: "/api/embed/" in r.url) as answer:
        start_embed(page, "a", options(api, id=REPORT_ID))
    page.wait_for_function("window.outcome !== null")
    frame = embed_frame(page)
    frame.wait_for_function("window.received.some((m) => m.url === '/report/load')")

    # Power BI's frame was opened before the function answered, at the generic address (bootstrapped).
    assert seen[:2] == ["frame opened", "token answered"]
    assert page.evaluate("document.querySelector('#a iframe').src").startswith(
        "https://app.powerbi.com/reportEmbed?uid="
    )
    issued = answer.value.json()
    [load] = sent(frame, "/report/load")
    assert load["body"]["accessToken"] == issued["accessToken"]
    assert fake.embed_tokens[issued["accessToken"]].token_id == issued["tokenId"]
    assert (load["body"]["embedUrl"], load["body"]["id"], load["body"]["tokenType"]) == (
        issued["embedUrl"],
        REPORT_ID,
        1,
    )
    assert load["headers"]["bootstrapped"] is True
    # It returned the embedded object itself, and said so with an event.
    assert page.evaluate("window.result === powerbi.get(document.getElementById('a'))") is True
    assert page.evaluate("window.events") == [
        {
            "name": "powerbi-embed-token",
            "target": "a",
            "detail": {
                "reason": "embed",
                "tokenId": issued["tokenId"],
                "expiration": issued["expiration"],
                "message": None,
            },
        }
    ]


@pytest.mark.usefixtures("short_tokens")
def test_the_timer_refreshes_the_token_with_set_access_token_before_it_expires(page: Any, web: str, api: str) -> None:
    page.clock.install()
    open_test_page(page, web)
    # An 8-second token with a 3-second margin is due 5 s after it was issued; the timer checks every second.
    frame, answers = embedded(page, api, marginMinutes=0.05, checkSeconds=1)
    assert tokens_set(frame) == []

    page.clock.run_for(6_000)

    frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")
    page.wait_for_function("window.events.some((e) => e.detail.reason === 'refresh')")
    [new_token] = tokens_set(frame)[:1]
    assert new_token != answers[0]["accessToken"]
    assert new_token in [a["accessToken"] for a in answers[1:]]
    assert len(sent(frame, "/report/load")) == 1  # set in place, not reloaded


@pytest.mark.usefixtures("short_tokens")
def test_a_laptop_that_slept_past_the_refresh_catches_up_when_its_timer_fires_late(
    page: Any, web: str, api: str
) -> None:
    page.clock.install()
    open_test_page(page, web)
    # The timer would check in an hour; the token is due after 5 s. The lid closes for two hours.
    frame, answers = embedded(page, api, marginMinutes=0.05, checkSeconds=3600)

    page.clock.fast_forward("02:00:00")  # due timers fire once, late: what a waking laptop sees

    frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")
    assert tokens_set(frame)[0] != answers[0]["accessToken"]
    assert len(page.evaluate("window.fetches")) == 2  # one late check, one refresh


@pytest.mark.usefixtures("short_tokens")
@pytest.mark.parametrize(
    "wake",
    [
        "document.dispatchEvent(new Event('visibilitychange'))",  # the tab is shown again
        "window.dispatchEvent(new Event('focus'))",  # the window regains focus
    ],
)
def test_a_wake_up_event_refreshes_a_due_token_before_any_timer_fires(page: Any, web: str, api: str, wake: str) -> None:
    page.clock.install()
    open_test_page(page, web)
    frame, answers = embedded(page, api, marginMinutes=0.05, checkSeconds=3600)
    now = page.evaluate("Date.now()")

    page.clock.set_system_time(now + 7_200_000)  # the wall clock jumped two hours; no timer has fired
    assert len(page.evaluate("window.fetches")) == 1
    page.evaluate(wake)

    frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")
    assert tokens_set(frame)[0] != answers[0]["accessToken"]


@pytest.mark.usefixtures("short_tokens")
def test_token_expired_fetches_a_new_token_sets_it_and_reloads(page: Any, web: str, api: str) -> None:
    open_test_page(page, web)
    frame, answers = embedded(page, api, marginMinutes=0, checkSeconds=3600)

    frame.evaluate("raiseTokenExpired()")

    frame.wait_for_function("window.received.filter((m) => m.url === '/report/load').length === 2")
    assert [m["url"] for m in frame.evaluate("window.received")] == ["/report/load", "/report/token", "/report/load"]
    [token] = tokens_set(frame)
    assert token != answers[0]["accessToken"]
    assert sent(frame, "/report/load")[1]["body"]["accessToken"] == token
    page.wait_for_function("window.events.some((e) => e.detail.reason === 'expired')")


@pytest.mark.usefixtures("short_tokens")
def test_a_refresh_answered_429_waits_for_retry_after_while_the_item_keeps_its_token(
    page: Any, web: str, api: str, fake: FakeUpstream
) -> None:
    page.clock.install()
    open_test_page(page, web)
    frame, _ = embedded(page, api, marginMinutes=0.05, checkSeconds=1)
    fake.throttle("GenerateToken", retry_after=30, times=1)

    with page.expect_response(lambda r: "/api/embed/" in r.url) as refused:
        page.clock.run_for(6_000)
    assert refused.value.status == 429
    page.wait_for_function("window.events.some((e) => e.name === 'powerbi-embed-error')")
    [error] = [e for e in page.evaluate("window.events") if e["name"] == "powerbi-embed-error"]
    detail = error["detail"]
    assert (detail["code"], detail["status"], detail["retryAfter"], detail["phase"]) == (
        "throttled",
        429,
        30,
        "refresh",
    )
    assert detail["message"] == refused.value.json()["error"]["message"]
    assert page.inner_text("#a > .powerbi-embed-error") == detail["message"]
    page.clock.run_for(20_000)  # checks every second, but none may call before Retry-After
    assert len(page.evaluate("window.fetches")) == 2
    assert tokens_set(frame) == []

    with page.expect_response(lambda r: "/api/embed/" in r.url) as retried:
        page.clock.run_for(10_500)
    assert retried.value.status == 200
    frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")
    assert tokens_set(frame)[0] == retried.value.json()["accessToken"]


@pytest.mark.parametrize(
    ("report_id", "status", "code"),
    [("not-a-guid", 400, "invalid_request"), ("0d5b6c43-9f8e-4a51-b2c7-3e4f5a6b7c8d", 404, "not_found")],
)
def test_the_functions_error_is_shown_in_the_container_and_raised_as_a_typed_event(
    page: Any, web: str, api: str, report_id: str, status: int, code: str
) -> None:
    open_test_page(page, web)

    with page.expect_response(lambda r: "/api/embed/" in r.url) as answer:
        start_embed(page, "a", options(api, id=report_id))
    page.wait_for_function("window.outcome !== null")

    body = answer.value.json()["error"]
    assert answer.value.status == status
    assert page.evaluate("window.outcome") == {
        "ok": False,
        "name": "EmbedTokenError",
        "code": code,
        "message": body["message"],
    }
    assert page.inner_text("#a > .powerbi-embed-error") == body["message"]
    assert page.query_selector("#a iframe") is None  # the bootstrapped frame is gone
    [event] = page.evaluate("window.events")
    assert (event["name"], event["target"]) == ("powerbi-embed-error", "a")
    assert event["detail"]["code"] == code
    assert event["detail"]["status"] == status
    assert event["detail"]["message"] == body["message"]
    assert event["detail"]["requestId"] == body.get("requestId")
    assert event["detail"]["phase"] == "embed"


def test_several_reports_share_one_token_and_are_refreshed_together(
    page: Any, web: str, api: str, fake: FakeUpstream, short_tokens: None
) -> None:
    page.clock.install()
    open_test_page(page, web)
    ids = [REPORT_ID, PAGINATED_REPORT_ID]
    opts = options(api, ids=ids, marginMinutes=0.05, checkSeconds=1)

    with page.expect_response(lambda r: "/api/embed/reports?" in r.url) as answer:
        page.evaluate(
            f"window.run(() => embedjs.embedReports([document.getElementById('a'), document.getElementById('b')], "
            f"{json.dumps(opts)}))"
        )
    page.wait_for_function("window.outcome !== null")
    assert page.evaluate("window.outcome") == {"ok": True}
    issued = answer.value.json()
    frames = [embed_frame(page, 0), embed_frame(page, 1)]
    for frame in frames:
        frame.wait_for_function("window.received.some((m) => m.url === '/report/load')")
    loads = [sent(frame, "/report/load")[0]["body"] for frame in frames]
    by_id = {item["id"]: item["embedUrl"] for item in issued["items"]}
    assert [(load["id"], load["embedUrl"]) for load in loads] == [(i, by_id[i]) for i in ids]  # each in its own
    assert {load["accessToken"] for load in loads} == {issued["accessToken"]}  # one token for both
    assert len(page.evaluate("window.fetches")) == 1

    page.clock.run_for(6_000)

    for frame in frames:
        frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")
    new_tokens = {tokens_set(frame)[0] for frame in frames}
    assert len(new_tokens) == 1 and issued["accessToken"] not in new_tokens  # refreshed together, by one fetch
    assert page.evaluate("window.fetches.length") == 2


@pytest.mark.usefixtures("short_tokens")
def test_stop_clears_every_timer_and_listener(page: Any, web: str, api: str) -> None:
    page.clock.install()
    open_test_page(page, web)
    frame, _ = embedded(page, api, marginMinutes=0.05, checkSeconds=1)

    page.evaluate("embedjs.stop()")
    page.clock.run_for(60_000)
    page.evaluate("window.dispatchEvent(new Event('focus')); document.dispatchEvent(new Event('visibilitychange'))")
    page.clock.run_for(1_000)

    assert len(page.evaluate("window.fetches")) == 1  # nothing after stop()
    assert tokens_set(frame) == []


# --- issue 17: a TokenExpired during a refresh, and stop() before the first token ---------------------------


def hold_token_requests(page: Any) -> list[Any]:
    """Hold every request to the function until the test lets it go (``route.continue_()``)."""
    held: list[Any] = []
    page.route("**/api/embed/**", lambda route: held.append(route))
    return held


def wait_until_held(page: Any, held: list[Any], count: int = 1) -> None:
    until(page, "true", lambda: len(held) >= count)  # Playwright calls the handler as it processes messages


def until(page: Any, expression: str, also: Callable[[], bool] = lambda: True, seconds: float = 20) -> None:
    """Poll ``expression`` in the page from here: with the page's clock paused, wait_for_function would wait on
    the page's (paused) timers for ever. Each poll is a round trip to the page; none sleeps."""
    give_up = time.monotonic() + seconds
    while not (page.evaluate(expression) and also()):
        if time.monotonic() > give_up:
            raise AssertionError(f"never true: {expression}")


@pytest.mark.usefixtures("short_tokens")
def test_a_token_expired_that_arrives_during_a_refresh_reloads_after_it(page: Any, web: str, api: str) -> None:
    page.clock.install()
    open_test_page(page, web)
    frame, answers = embedded(page, api, marginMinutes=0.05, checkSeconds=1)
    page.evaluate("window.sdkErrors = 0; document.getElementById('a').addEventListener('error', () => sdkErrors++)")
    held = hold_token_requests(page)

    page.clock.run_for(6_000)  # the timer's refresh starts; its fetch is held
    wait_until_held(page, held)
    frame.evaluate("raiseTokenExpired()")  # Power BI says the token expired while the refresh waits
    page.wait_for_function("window.sdkErrors === 1")
    page.unroute("**/api/embed/**")
    held[0].continue_()

    frame.wait_for_function("window.received.filter((m) => m.url === '/report/load').length === 2")
    [token, *_] = tokens_set(frame)
    assert token != answers[0]["accessToken"]
    assert sent(frame, "/report/load")[1]["body"]["accessToken"] in tokens_set(frame)  # reloaded with a new token
    page.wait_for_function("window.events.some((e) => e.detail.reason === 'expired')")


@pytest.mark.usefixtures("short_tokens")
def test_a_token_expired_while_a_refresh_sets_its_token_reloads_after_it_too(
    page: Any, web: str, api: str, fake: FakeUpstream
) -> None:
    """The late case: the refresh already has its token; the TokenExpired is kept for a second refresh."""
    page.clock.install()
    open_test_page(page, web)
    frame, _ = embedded(page, api, marginMinutes=0.05, checkSeconds=3600)  # no timer: focus starts the refresh
    page.evaluate("window.sdkErrors = 0; document.getElementById('a').addEventListener('error', () => sdkErrors++)")
    frame.evaluate("window.holdTokens = true")  # Power BI's frame answers the token update when the test says

    page.clock.run_for(6_000)
    page.evaluate("window.dispatchEvent(new Event('focus'))")
    frame.wait_for_function("window.heldTokens.length === 1")  # the refresh has its token and is setting it
    frame.evaluate("raiseTokenExpired()")
    page.wait_for_function("window.sdkErrors === 1")
    frame.evaluate("releaseTokens()")

    frame.wait_for_function("window.received.filter((m) => m.url === '/report/load').length === 2")
    assert len(page.evaluate("window.fetches")) == 3  # the first token, the refresh, and the one for the reload


def test_stop_during_a_retry_after_wait_rejects_embed_and_leaves_nothing_behind(
    page: Any, web: str, api: str, fake: FakeUpstream
) -> None:
    page.clock.install()
    open_test_page(page, web)
    page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 1)  # time moves only when the test moves it
    fake.throttle("GenerateToken", retry_after=30, times=1)

    with page.expect_response(lambda r: "/api/embed/" in r.url) as refused:
        start_embed(page, "a", options(api, id=REPORT_ID, checkSeconds=1))
    assert refused.value.status == 429
    until(page, "document.querySelector('#a > .powerbi-embed-error') !== null")  # waiting 30 s
    page.evaluate("embedjs.stop()")

    until(page, "window.outcome !== null")
    assert page.evaluate("window.outcome") == {
        "ok": False,
        "name": "EmbedStoppedError",
        "code": "stopped",
        "message": "stop() was called before the item was embedded.",
    }
    page.clock.run_for(120_000)
    assert len(page.evaluate("window.fetches")) == 1  # the wait's timer is gone: no second try
    assert page.query_selector("#a iframe") is None  # no bootstrapped frame
    assert page.query_selector("#a > .powerbi-embed-error") is None  # no message about a wait that ended


def test_stop_during_the_first_fetch_leaves_no_frame_and_no_timer(page: Any, web: str, api: str) -> None:
    page.clock.install()
    open_test_page(page, web)
    page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 1)
    held = hold_token_requests(page)

    start_embed(page, "a", options(api, id=REPORT_ID, checkSeconds=1, marginMinutes=100_000))
    wait_until_held(page, held)
    assert page.query_selector("#a iframe") is not None  # bootstrapped while the token is fetched
    page.evaluate("embedjs.stop()")

    until(page, "window.outcome !== null")
    assert page.evaluate("window.outcome")["name"] == "EmbedStoppedError"
    assert page.query_selector("#a iframe") is None
    page.unroute("**/api/embed/**")
    with contextlib.suppress(Exception):  # the page cancelled the fetch (stop() aborts it): nothing to let go
        held[0].continue_()
    page.clock.run_for(60_000)  # a timer left behind would refresh (every token is due at once)
    assert len(page.evaluate("window.fetches")) == 1
    assert page.query_selector("#a iframe") is None
    assert page.evaluate("window.events") == []


def test_any_answer_with_retry_after_is_waited_out_before_the_next_try(page: Any, web: str, api: str) -> None:
    """The function sends Retry-After with every transient fault (here 502 upstream_unreachable), not only 429/503."""
    page.clock.install()
    open_test_page(page, web)
    page.clock.pause_at(page.evaluate("Date.now()") / 1000 + 1)
    held = hold_token_requests(page)
    unreachable = {"error": {"code": "upstream_unreachable", "message": "Power BI could not be reached."}}
    cors = {"Access-Control-Allow-Origin": web, "Access-Control-Expose-Headers": "Retry-After", "Retry-After": "7"}

    start_embed(page, "a", options(api, id=REPORT_ID))
    wait_until_held(page, held)
    page.unroute("**/api/embed/**")
    held[0].fulfill(status=502, headers=cors, content_type="application/json", body=json.dumps(unreachable))
    until(page, "document.querySelector('#a > .powerbi-embed-error') !== null")  # shown while it waits

    page.clock.run_for(6_000)
    assert len(page.evaluate("window.fetches")) == 1  # not before Retry-After
    page.clock.run_for(1_500)
    until(page, "window.outcome !== null")

    assert page.evaluate("window.outcome") == {"ok": True}
    assert len(page.evaluate("window.fetches")) == 2
    assert page.query_selector("#a > .powerbi-embed-error") is None
