"""The OpenAPI 3.1 document of the function's routes, served at ``GET /api/openapi.json``.

Built once from constants: no settings read, no upstream call, so it answers even when the configuration is
incomplete. It describes every route, parameter, the headers that matter (function key, the signed-in
principal), the answer shapes and every error code with its status, so that a static-site developer can
generate a client. A test checks it against the routes ``function_app`` registers.
"""

from __future__ import annotations

import copy
import json
from functools import cache
from typing import Any

GUID = {"type": "string", "format": "uuid", "pattern": "^[0-9a-fA-F]{8}-([0-9a-fA-F]{4}-){3}[0-9a-fA-F]{12}$"}

# (status, codes) of every error answer; the codes are shared.errors' classes.
ERRORS: dict[str, tuple[str, ...]] = {
    "400": ("invalid_request",),
    "401": ("unauthenticated",),
    "403": ("not_allowed",),
    "404": ("not_found",),
    "429": ("throttled",),
    "500": ("configuration_error", "internal_error"),
    "502": ("sign_in_failed", "powerbi_error", "upstream_unreachable"),
    "503": ("unavailable", "signin_unavailable"),
    "504": ("upstream_timeout",),
}

# The codes answered with Retry-After (transient upstream faults), by status.
RETRY_AFTER: dict[str, tuple[str, ...]] = {
    "429": ("throttled",),
    "502": ("upstream_unreachable",),
    "503": ("unavailable", "signin_unavailable"),
    "504": ("upstream_timeout",),
}

_WORKSPACE = {
    "name": "workspaceId",
    "in": "query",
    "required": False,
    "description": "The item's workspace; when omitted, the function's default workspace, or with a customer "
    "directory the signed-in user's customer's first workspace.",
    "schema": GUID,
}
_ACCESS_LEVEL = {
    "name": "accessLevel",
    "in": "query",
    "required": False,
    "description": "Edit only with POWERBI_ALLOW_EDIT=true; any other value than View or Edit is a 400.",
    "schema": {"type": "string", "enum": ["View", "Edit"]},
}
_PRINCIPAL = {
    "name": "x-ms-client-principal",
    "in": "header",
    "required": False,
    "description": "Set by the platform (App Service Authentication, or Static Web Apps forwarding to a linked "
    "backend), never by the page: the signed-in user, base64 JSON. Read only when row-level security takes the "
    "identity from the principal, and only when the platform vouches for it.",
    "schema": {"type": "string"},
}
_PRINCIPAL_NAME = {
    "name": "x-ms-client-principal-name",
    "in": "header",
    "required": False,
    "description": "Set by App Service Authentication: the signed-in user's name.",
    "schema": {"type": "string"},
}


def _path_id(name: str, what: str) -> dict[str, Any]:
    return {"name": name, "in": "path", "required": True, "description": f"The {what}'s id.", "schema": GUID}


def _error_responses() -> dict[str, Any]:
    answers: dict[str, Any] = {}
    for status, codes in ERRORS.items():
        answer: dict[str, Any] = {
            "description": ", ".join(codes),
            "headers": {"Cache-Control": {"$ref": "#/components/headers/CacheControl"}},
            "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
        }
        if status == "401":
            # The Functions host itself answers a missing or wrong function key: 401, empty body.
            answer["description"] += "; or, from the host, no valid function key (empty body)"
            answer["content"]["text/plain"] = {"schema": {"type": "string", "maxLength": 0}}
        if status in RETRY_AFTER:
            # Every answer caused by a transient upstream fault says when to try again.
            answer["headers"]["Retry-After"] = {"$ref": "#/components/headers/RetryAfter"}
            if RETRY_AFTER[status] != codes:
                answer["description"] += f" (Retry-After with {', '.join(RETRY_AFTER[status])})"
        answers[status] = answer
    return answers


def _embed_operation(operation_id: str, summary: str, parameters: list[dict[str, Any]], schema: str) -> Any:
    return {
        "get": {
            "operationId": operation_id,
            "summary": summary,
            "tags": ["embed"],
            "parameters": [*parameters, _PRINCIPAL, _PRINCIPAL_NAME],
            "responses": {
                "200": {
                    "description": "An embed token and what powerbi-client needs.",
                    "headers": {"Cache-Control": {"$ref": "#/components/headers/CacheControl"}},
                    "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{schema}"}}},
                },
                **_error_responses(),
            },
        }
    }


def _token_fields() -> dict[str, Any]:
    return {
        "accessToken": {"type": "string", "description": "The embed token (never cache it in a shared place)."},
        "tokenType": {"const": "Embed"},
        "tokenId": {"type": "string", "description": "Power BI's id of this token; a new id means a new token."},
        "expiration": {"type": "string", "format": "date-time", "description": "UTC, ISO 8601."},
    }


def _embed_schema(kind: str, extra: dict[str, Any], required: tuple[str, ...]) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": {
            "type": {"const": kind},
            "id": {"type": "string"},
            "workspaceId": {"type": "string"},
            "embedUrl": {"type": "string", "format": "uri"},
            **extra,
            **_token_fields(),
        },
        "required": ["type", "id", "workspaceId", "embedUrl", *required, *_token_fields()],
    }


def _document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Power BI embed-token function",
            "version": "1.0.0",
            "description": "Hands Power BI embed tokens to static websites. Every answer has "
            'Cache-Control: no-store. Every failure is {"error": {"code", "message", "requestId"}}.',
        },
        "servers": [{"url": "/api", "description": "The function app (or a Static Web App's linked backend)"}],
        "security": [{"functionKey": []}, {"functionKeyQuery": []}],
        "paths": _paths(),
        "components": {
            "securitySchemes": {
                "functionKey": {"type": "apiKey", "in": "header", "name": "x-functions-key"},
                "functionKeyQuery": {"type": "apiKey", "in": "query", "name": "code"},
            },
            "headers": {
                "CacheControl": {"schema": {"const": "no-store"}},
                "RetryAfter": {
                    "description": "Whole seconds to wait before trying again (a date from Power BI or Entra "
                    "ID is turned into seconds).",
                    "schema": {"type": "string", "pattern": "^[0-9]+$"},
                },
            },
            "schemas": _schemas(),
        },
    }


def _paths() -> dict[str, Any]:
    """The routes: the five embed operations, health and this document."""
    return {**_embed_paths(), **_operations_paths()}


def _embed_paths() -> dict[str, Any]:
    return {
        "/embed/reports/{reportId}": _embed_operation(
            "embedReport",
            "An embed token for a report (a paginated report too)",
            [_path_id("reportId", "report"), _WORKSPACE, _ACCESS_LEVEL],
            "ReportEmbed",
        ),
        "/embed/reports": _embed_operation(
            "embedReports",
            "One embed token for up to 50 reports",
            [
                {
                    "name": "ids",
                    "in": "query",
                    "required": True,
                    "description": "Comma-separated report ids (at most 50); every one must be allowed.",
                    "schema": {"type": "string"},
                },
                _WORKSPACE,
                _ACCESS_LEVEL,
            ],
            "ReportsEmbed",
        ),
        "/embed/dashboards/{dashboardId}": _embed_operation(
            "embedDashboard",
            "An embed token for a dashboard",
            [_path_id("dashboardId", "dashboard"), _WORKSPACE, _ACCESS_LEVEL],
            "DashboardEmbed",
        ),
        "/embed/dashboards/{dashboardId}/tiles/{tileId}": _embed_operation(
            "embedTile",
            "An embed token for a dashboard tile",
            [_path_id("dashboardId", "dashboard"), _path_id("tileId", "tile"), _WORKSPACE, _ACCESS_LEVEL],
            "TileEmbed",
        ),
        "/embed/datasets/{datasetId}/create": _embed_operation(
            "embedCreate",
            "A token to create a report on a dataset (only with POWERBI_ALLOW_EDIT=true)",
            [_path_id("datasetId", "dataset"), _WORKSPACE, _ACCESS_LEVEL],
            "CreateEmbed",
        ),
    }


def _operations_paths() -> dict[str, Any]:
    return {
        "/health": {
            "get": {
                "operationId": "health",
                "summary": "Is the configuration complete? No secrets, no upstream call.",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "Configured.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    },
                    "500": {
                        "description": "Misconfigured: the log line (and, with details on, `problems`) says why.",
                        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Health"}}},
                    },
                },
            }
        },
        "/openapi.json": {
            "get": {
                "operationId": "openapi",
                "summary": "This document (anonymous).",
                "tags": ["operations"],
                "security": [],
                "responses": {
                    "200": {
                        "description": "The OpenAPI document.",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
            }
        },
    }


def _schemas() -> dict[str, Any]:
    """The answers' shapes: each kind of embed, health, and the one error body."""
    return {
        "ReportEmbed": _embed_schema("report", {}, ()),
        "DashboardEmbed": _embed_schema("dashboard", {}, ()),
        "TileEmbed": _embed_schema("tile", {"dashboardId": {"type": "string"}}, ("dashboardId",)),
        "CreateEmbed": _embed_schema("create", {"datasetId": {"type": "string"}}, ("datasetId",)),
        "ReportsEmbed": {
            "type": "object",
            "properties": {
                "type": {"const": "reports"},
                "items": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "properties": {
                            "id": {"type": "string"},
                            "workspaceId": {"type": "string"},
                            "embedUrl": {"type": "string", "format": "uri"},
                        },
                        "required": ["id", "workspaceId", "embedUrl"],
                    },
                },
                **_token_fields(),
            },
            "required": ["type", "items", *_token_fields()],
        },
        "Health": {
            "type": "object",
            "properties": {
                "status": {"type": "string", "enum": ["ok", "misconfigured"]},
                "requestId": {"type": "string"},
            },
            "required": ["status"],
        },
        "Error": {
            "type": "object",
            "properties": {
                "error": {
                    "type": "object",
                    "properties": {
                        "code": {"type": "string", "enum": sorted({c for cs in ERRORS.values() for c in cs})},
                        "message": {
                            "type": "string",
                            "description": "Plain words for the reader. A 4xx says what is wrong with "
                            "the request (which id is not a GUID, which values accessLevel takes, ...); a "
                            "5xx says only what kind of failure it was.",
                        },
                        "requestId": {
                            "type": "string",
                            "description": "The invocation's id: quote it to the function's operator.",
                        },
                    },
                    "required": ["code", "message"],
                }
            },
            "required": ["error"],
        },
    }


@cache
def openapi_json() -> str:
    """The document as JSON text (built once per worker)."""
    return json.dumps(_document())


def openapi_document() -> dict[str, Any]:
    """A copy of the document, for tests and tools."""
    return copy.deepcopy(json.loads(openapi_json()))
