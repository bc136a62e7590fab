"""The web sample end to end in headless Chromium: page -> embed.js -> function (local host, real HTTP, CORS) ->
emulator, and the SDK's messages to a fake Power BI embed page (fixtures in ``tests/browser.py``).

The page is served from its own origin, so every call to the function is cross-origin, and it sends a function
key in a header, so each one is preflighted. embed.js's own behaviours are covered in ``tests/test_embed_js.py``;
these check that the sample page wires it up and tells its reader what happened.

Skipped only when Playwright or /usr/bin/chromium is missing. web/node_modules must be installed beforehand
(``npm ci --ignore-scripts`` in web/: ``make setup`` and .ci/run do it); the test fails, naming the command,
when it is not.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import urlencode

import pytest

import function_app
from emulator import REPORT_ID, FakeUpstream
from emulator.host import Cors, FunctionRoutes, LocalHost
from tests.browser import (  # noqa: F401 - fixtures
    KEY,
    SCREENSHOT,
    SKIP_WITHOUT_CHROMIUM,
    api_fixture,
    browser_fixture,
    page_fixture,
    sent,
    short_tokens_fixture,
    web_fixture,
)

pytestmark = SKIP_WITHOUT_CHROMIUM


def open_page(page: Any, web: str, api: str, **params: str) -> tuple[Any, dict[str, Any]]:
    """Open the sample; returns the fake embed frame and the function's answer that the page got."""
    query = urlencode({"api": api, "key": KEY, "id": REPORT_ID, **params})
    with (
        page.expect_response(lambda r: "/api/embed/" in r.url and r.request.method == "GET") as answer,
        page.expect_event("framenavigated", lambda f: f.url.startswith("https://app.powerbi.com/")) as frame,
    ):
        page.goto(f"{web}/?{query}")
    assert answer.value.status == 200, answer.value.text()
    assert answer.value.headers["access-control-allow-origin"] == web
    page.wait_for_function("document.getElementById('status').textContent.includes('loaded')")
    return frame.value, answer.value.json()


def test_the_page_embeds_what_the_function_issued(page: Any, web: str, api: str, fake: FakeUpstream) -> None:
    frame, answer = open_page(page, web, api)

    [load] = sent(frame, "/report/load")
    issued = fake.embed_tokens[answer["accessToken"]]  # issued by the emulator's GenerateToken
    assert issued.token_id == answer["tokenId"]
    assert load["body"]["accessToken"] == answer["accessToken"]
    assert load["body"]["embedUrl"] == answer["embedUrl"]
    assert (load["body"]["type"], load["body"]["id"], load["body"]["tokenType"]) == ("report", REPORT_ID, 1)
    # Bootstrapped: the frame was opened before the token (and its embed URL) came back.
    assert frame.url == f"https://app.powerbi.com/reportEmbed?uid={load['headers']['uid']}"
    assert load["headers"]["bootstrapped"] is True
    status = page.inner_text("#status")
    assert status.startswith("The report loaded. Its token expires at")  # the page's "loaded" handler ran
    assert page.query_selector(".powerbi-embed-error") is None
    assert sent(frame, "/report/token") == []  # a fresh token is not refreshed
    page.screenshot(path=str(SCREENSHOT))


@pytest.mark.usefixtures("short_tokens")
def test_the_page_refreshes_the_token_before_it_expires(page: Any, web: str, api: str, fake: FakeUpstream) -> None:
    answers: list[dict[str, Any]] = []
    page.on("response", lambda r: answers.append(r.json()) if "/api/embed/" in r.url and r.ok else None)
    frame, first = open_page(page, web, api, refreshMinutes="0.1", checkSeconds="0.5")

    frame.wait_for_function("window.received.some((m) => m.url === '/report/token')")  # about 2 s

    new_token = sent(frame, "/report/token")[0]["body"]
    assert new_token != first["accessToken"]
    assert fake.embed_tokens[new_token].token_id != fake.embed_tokens[first["accessToken"]].token_id
    assert new_token in [a["accessToken"] for a in answers[1:]]  # the function's answer to the page's refresh
    assert len(sent(frame, "/report/load")) == 1  # set in place, not reloaded
    page.wait_for_function("document.getElementById('status').textContent.startsWith('Token refreshed at')")


@pytest.mark.usefixtures("short_tokens")
def test_a_token_expired_error_reloads_the_report_with_a_new_token(page: Any, web: str, api: str) -> None:
    frame, first = open_page(page, web, api, refreshMinutes="0", checkSeconds="3600")

    frame.evaluate("raiseTokenExpired()")

    frame.wait_for_function("window.received.filter((m) => m.url === '/report/load').length === 2")
    received = [m["url"] for m in frame.evaluate("window.received")]
    assert received == ["/report/load", "/report/token", "/report/load"]
    [token] = sent(frame, "/report/token")
    reload = sent(frame, "/report/load")[1]
    assert token["body"] != first["accessToken"]
    assert reload["body"]["accessToken"] == token["body"]
    assert page.query_selector(".powerbi-embed-error") is None  # recovered: nothing for the reader to do


@pytest.mark.parametrize(
    ("report_id", "status"),
    [("not-a-guid", 400), ("0d5b6c43-9f8e-4a51-b2c7-3e4f5a6b7c8d", 404)],  # refused by the function; by Power BI
)
def test_an_error_from_the_function_is_shown_in_plain_words(
    page: Any, web: str, api: str, report_id: str, status: int
) -> None:
    query = urlencode({"api": api, "key": KEY, "id": report_id})
    with page.expect_response(lambda r: "/api/embed/" in r.url and r.request.method == "GET") as answer:
        page.goto(f"{web}/?{query}")

    assert answer.value.status == status
    message = answer.value.json()["error"]["message"]
    page.wait_for_selector("#embed-container > .powerbi-embed-error", state="visible")
    assert page.inner_text("#embed-container > .powerbi-embed-error") == message
    page.wait_for_function("document.getElementById('status').textContent === 'No report embedded.'")
    assert page.query_selector("iframe") is None  # the bootstrapped frame is gone


def test_a_page_origin_missing_from_cors_is_told_what_to_check(page: Any, web: str, api: str) -> None:
    with LocalHost(FunctionRoutes(function_app.app, keys={KEY}), cors=Cors(("http://elsewhere.example",))) as host:
        page.goto(f"{web}/?{urlencode({'api': f'{host.url}/api', 'key': KEY, 'id': REPORT_ID})}")
        page.wait_for_selector(".powerbi-embed-error", state="visible")

    assert page.inner_text(".powerbi-embed-error") == (
        f"Could not reach the embed-token function at {host.url}/api. "
        "Is it running, and does it allow this page's origin (CORS)?"
    )
