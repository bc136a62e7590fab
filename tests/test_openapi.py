"""GET /api/openapi.json: the document matches the routes function_app registers and is valid OpenAPI 3.1."""

from __future__ import annotations

import json
import re

from openapi_spec_validator import validate

import function_app
from emulator import FakeUpstream
from emulator.host import FunctionRoutes
from shared.openapi import ERRORS, openapi_document


def registered() -> dict[str, tuple[str, ...]]:
    """'/embed/reports/{reportId}' -> methods, as the host lists the app's HTTP functions."""
    routes = FunctionRoutes(function_app.app)
    return {
        "/" + f.route.removeprefix("api/"): tuple(m.lower() for m in f.methods or ()) for f in routes.http_functions
    }


def test_every_registered_route_is_documented_and_none_is_invented() -> None:
    document = openapi_document()
    documented = {path: tuple(sorted(ops)) for path, ops in document["paths"].items()}
    assert documented == {path: tuple(sorted(methods)) for path, methods in registered().items()}
    for path, operations in document["paths"].items():
        names = set(re.findall(r"\{(\w+)\}", path))
        for operation in operations.values():
            in_path = {p["name"] for p in operation.get("parameters", []) if p["in"] == "path"}
            assert in_path == names, path


def test_the_document_is_valid_openapi_3_1() -> None:
    document = openapi_document()
    assert document["openapi"] == "3.1.0"
    validate(document)


def test_errors_are_documented_with_code_and_message_required_and_request_id() -> None:
    error = openapi_document()["components"]["schemas"]["Error"]["properties"]["error"]
    assert error["required"] == ["code", "message"]
    assert "requestId" in error["properties"]
    assert set(error["properties"]["code"]["enum"]) == {c for codes in ERRORS.values() for c in codes}


def test_it_is_served_anonymously_even_where_function_keys_are_enforced_and_calls_nothing_upstream(
    fake: FakeUpstream,
) -> None:
    routes = FunctionRoutes(function_app.app, keys={"a-key"})
    fake.reset_records()

    answer = routes.dispatch("GET", "/api/openapi.json")

    assert answer.status_code == 200
    assert answer.mimetype == "application/json"
    assert json.loads(answer.get_body()) == openapi_document()
    assert fake.requests == []
    assert routes.dispatch("GET", "/api/embed/reports/x").status_code == 401  # the embed routes still need the key


def test_every_error_class_is_documented_at_its_status() -> None:
    import shared.errors as errors

    classes = [c for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.EmbedError)]
    for cls in classes:
        if cls is errors.Throttled:  # its status and code are set per answer: 429 throttled, 503 unavailable
            assert "throttled" in ERRORS["429"] and "unavailable" in ERRORS["503"]
            continue
        assert cls.code in ERRORS[str(cls.status)], cls.__name__


def test_every_answer_with_retry_after_documents_the_header() -> None:
    from shared.errors import SignInUnavailable, Throttled, UpstreamTimeout, UpstreamUnreachable
    from shared.openapi import RETRY_AFTER

    answers = [
        Throttled("", status=429, retry_after=1),
        Throttled("", status=503, retry_after=1),
        SignInUnavailable("", retry_after=1),
        UpstreamUnreachable(""),
        UpstreamTimeout(""),
    ]
    operation = openapi_document()["paths"]["/embed/reports/{reportId}"]["get"]["responses"]
    for error in answers:
        assert "Retry-After" in error.headers
        assert error.code in RETRY_AFTER[str(error.status)]
        assert "Retry-After" in operation[str(error.status)]["headers"]
