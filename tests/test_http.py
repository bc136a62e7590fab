"""The app over real HTTP, through the local stand-in for the Functions host."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
import requests

import function_app
from emulator import REPORT_ID, FakeUpstream
from emulator.host import FunctionRoutes, LocalHost
from shared.embed import EmbedService


@pytest.fixture
def host(
    fake: FakeUpstream, env: dict[str, str], make_service: Callable[[dict[str, str]], EmbedService]
) -> Iterator[str]:
    function_app.use_service(make_service(env))
    with LocalHost(FunctionRoutes(function_app.app, keys={"key-123"})) as local:
        yield local.url
    function_app.use_service(None)


def test_a_token_over_http(host: str, fake: FakeUpstream) -> None:
    response = requests.get(f"{host}/api/embed/reports/{REPORT_ID}", params={"code": "key-123"}, timeout=10)

    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.headers["Cache-Control"] == "no-store"
    assert response.json()["accessToken"] in fake.embed_tokens


def test_function_key_in_a_header(host: str) -> None:
    response = requests.get(f"{host}/api/health", headers={"x-functions-key": "key-123"}, timeout=10)

    assert response.json()["status"] == "ok"


@pytest.mark.parametrize(
    ("method", "path", "params", "status"),
    [
        ("GET", f"/api/embed/reports/{REPORT_ID}", {}, 401),  # no function key
        ("GET", f"/api/embed/reports/{REPORT_ID}", {"code": "wrong"}, 401),
        ("GET", "/api/embed/workbooks/x", {"code": "key-123"}, 404),
        ("GET", f"/embed/reports/{REPORT_ID}", {"code": "key-123"}, 404),  # routePrefix is api
        ("POST", f"/api/embed/reports/{REPORT_ID}", {"code": "key-123"}, 405),
    ],
)
def test_the_host_refuses_like_azure(
    host: str, fake: FakeUpstream, method: str, path: str, params: dict[str, str], status: int
) -> None:
    response = requests.request(method, f"{host}{path}", params=params, timeout=10)

    assert response.status_code == status
    assert fake.requests == []
