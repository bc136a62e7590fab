"""Wire-format helpers shared by the fake's Entra ID and Power BI endpoints, and a tiny JSON schema checker.

A schema is plain data: a dict is an object with a closed set of properties, ``[x]`` a list of x, a tuple an
enum, a type a scalar, ``Req(x)`` a required property and ``Map(x)`` an object whose values are all x.  It
describes both the Power BI request bodies and the catalogue file.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from werkzeug.wrappers import Response


@dataclass(frozen=True)
class Req:
    """Marks a required property in a schema."""

    spec: Any


@dataclass(frozen=True)
class Map:
    """An object with free keys whose values all follow ``spec``."""

    spec: Any


def schema_error(value: Any, spec: Any, where: str) -> str | None:
    """Why ``value`` violates ``spec``, or None.  Property names match case-sensitively: stricter than the
    service, on purpose, so that a misspelt property fails loudly in tests."""
    if isinstance(spec, Req):
        spec = spec.spec
    if isinstance(spec, Map | dict) and not isinstance(value, dict):
        return f"'{where}' must be an object"
    if isinstance(spec, Map):
        errors = (schema_error(v, spec.spec, f"{where}.{k}") for k, v in value.items())
        return next((e for e in errors if e is not None), None)
    if isinstance(spec, dict):
        missing = [k for k, v in spec.items() if isinstance(v, Req) and k not in value]
        if missing:
            return f"'{where}.{missing[0]}' is required"
        for key, item in value.items():
            if key not in spec:
                return f"Unknown property '{where}.{key}'"
            if (err := schema_error(item, spec[key], f"{where}.{key}")) is not None:
                return err
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"'{where}' must be an array"
        errors = (schema_error(x, spec[0], f"{where}[{i}]") for i, x in enumerate(value))
        return next((e for e in errors if e is not None), None)
    if isinstance(spec, tuple):
        return None if value in spec else f"'{where}' must be one of {', '.join(map(str, spec))}"
    # bool is a subclass of int, but JSON true is not a valid Int32; a JSON number without a point is a float too.
    if spec is float and isinstance(value, int) and not isinstance(value, bool):
        return None
    if not isinstance(value, spec) or (spec is int and isinstance(value, bool)):
        return f"'{where}' must be of type {spec.__name__}"
    return None


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def iso(epoch: float) -> str:
    """ISO 8601 UTC with seconds precision; truncating never extends a lifetime."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def json_response(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, content_type="application/json; charset=utf-8")


def pbi_error(status: int, code: str, message: str | None = None, headers: dict[str, str] | None = None) -> Response:
    """Power BI's error body: ``{"error": {"code", "message"}}``, or, for the entity and authorization errors
    that carry no message, the ``pbi.error`` shape the service sends."""
    if message is None:
        pbi = {"code": code, "parameters": {}, "details": [], "exceptionCulprit": 1}
        return json_response(status, {"error": {"code": code, "pbi.error": pbi}}, headers)
    return json_response(status, {"error": {"code": code, "message": message}}, headers)
