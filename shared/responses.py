"""HTTP answers: JSON bodies, ``Cache-Control: no-store``, and the one mapping of errors.

Tokens must not sit in browser or proxy caches, so every answer says ``no-store``.
Every failure becomes ``{"error": {"code", "message"}}`` here, with one log line
carrying the cause and Power BI's RequestId; nothing else answers errors.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared.errors import EmbedError

logger = logging.getLogger(__name__)


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body),
        status_code=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(error: EmbedError) -> func.HttpResponse:
    logger.warning("answered %d %s: %s request_id=%s", error.status, error.code, error.cause, error.request_id or "-")
    return json_response({"error": {"code": error.code, "message": error.message}}, error.status, error.headers)


def respond(produce: Callable[[], dict[str, Any]]) -> func.HttpResponse:
    """Run a handler's work and answer with its JSON, or with the error it raised."""
    try:
        return json_response(produce())
    except EmbedError as error:
        return error_response(error)
    except Exception as exc:  # noqa: BLE001 - the last line of defence: never a traceback out
        # Only the type: an unexpected exception's text could hold anything.
        logger.error("answered 500 internal_error: unexpected %s", type(exc).__name__)
        return json_response({"error": {"code": "internal_error", "message": "The function failed unexpectedly."}}, 500)
