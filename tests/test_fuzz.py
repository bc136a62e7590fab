"""Fuzz every route of the OpenAPI document with schemathesis against the local host and the emulator.

Each operation gets ``EXAMPLES`` generated requests (valid and invalid ids, workspace ids, access levels, ids
lists, headers), sent over real HTTP with a function key to the app configured like a deployment. Every answer
must be no 5xx, have a status the document lists, the document's content type and headers, and a body that
matches its schema; the host's request timeout bounds any hang. ``FUZZ_REPORT`` counts the cases sent.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

import function_app
from emulator import FakeUpstream
from emulator.entra import emulator_session
from emulator.host import FunctionRoutes, LocalHost
from shared.openapi import openapi_document

KEY = "fuzz-key"
EXAMPLES = 40  # per operation: 7 operations, about 280 cases
TIMEOUT_SECONDS = 25  # more than POWERBI_REQUEST_DEADLINE_SECONDS (20): a hang fails the case
FUZZ_REPORT: Counter[str] = Counter()

schema = schemathesis.openapi.from_dict(openapi_document())


@pytest.fixture
def host(fake: FakeUpstream, env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    function_app.use_service(None)
    function_app.use_session(emulator_session(fake.base_url))  # as the local host does for the emulator
    with LocalHost(FunctionRoutes(function_app.app, keys={KEY})) as local:
        yield f"{local.url}/api"
    function_app.use_service(None)
    function_app.use_session(None)


@schema.parametrize()
@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same cases every run
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=list(HealthCheck),
)
def test_every_route_answers_as_documented(case: Any, host: str) -> None:
    response = case.call_and_validate(
        base_url=host,
        headers={"x-functions-key": KEY},
        timeout=TIMEOUT_SECONDS,
        checks=[
            not_a_server_error,
            status_code_conformance,
            content_type_conformance,
            response_headers_conformance,
            response_schema_conformance,
        ],
    )
    FUZZ_REPORT[f"{case.operation.label} {response.status_code}"] += 1
