"""HTTP answers: JSON bodies, ``Cache-Control: no-store``, and the one mapping of errors.

Tokens must not sit in browser or proxy caches, so every answer says ``no-store``.
Every failure becomes ``{"error": {"code", "message", "requestId"}}`` here, with one log line
carrying the full cause, the request id and Power BI's RequestId; nothing else answers errors.

A 4xx answer's message says what is wrong with the request, in production too (it never names the
configuration: see ``shared.errors``); the operator's hint is added only with details on. A 5xx
answer's message tells strangers nothing: in production it is the code's generic message
(``errors.PUBLIC_MESSAGES``); the detailed one (setting names, AADSTS code and hint, Power BI's
status and RequestId) only with details on (``settings.policy.error_details``). ``requestId`` is the
invocation id, which the log line carries too, so an operator can find the cause from an answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

import azure.functions as func

from shared import telemetry
from shared.errors import ClientError, EmbedError, public_message

logger = logging.getLogger(__name__)


def json_response(body: dict[str, Any], status: int = 200, headers: dict[str, str] | None = None) -> func.HttpResponse:
    return func.HttpResponse(
        json.dumps(body),
        status_code=status,
        mimetype="application/json",
        headers={"Cache-Control": "no-store", **(headers or {})},
    )


def error_response(error: EmbedError, request_id: str = "", details: bool = False) -> func.HttpResponse:
    logger.warning(
        "answered %d %s requestId=%s: %s powerbi_request_id=%s",
        error.status,
        error.code,
        request_id or "-",
        error.cause,
        error.request_id or "-",
    )
    telemetry.annotate(error_code=error.code)
    if details:
        message = error.detailed_message
    elif isinstance(error, ClientError):
        message = error.message  # about the request, never the configuration
    else:
        message = public_message(error.code)
    body = {"error": {"code": error.code, "message": message, "requestId": request_id}}
    headers = dict(error.headers)
    if "Retry-After" in headers:
        # A cross-origin page (CORS) may read only the headers listed; the wait is meant for it.
        headers["Access-Control-Expose-Headers"] = "Retry-After"
    return json_response(body, error.status, headers)


def respond(
    produce: Callable[[], dict[str, Any]], request_id: str = "", details: Callable[[], bool] = lambda: False
) -> func.HttpResponse:
    """Run a handler's work and answer with its JSON, or with the error it raised.

    ``details`` is asked only when there is an error to answer, so a success costs nothing more.
    """
    try:
        return json_response(produce())
    except EmbedError as error:
        return error_response(error, request_id, _details(details))
    except Exception as exc:
        # The traceback goes to the log, through shared.redact's filter (secrets and tokens masked);
        # the answer says nothing.
        logger.error(
            "answered 500 internal_error requestId=%s: unexpected %s",
            request_id or "-",
            type(exc).__name__,
            exc_info=exc,
        )
        telemetry.annotate(error_code="internal_error")
        body = {
            "error": {"code": "internal_error", "message": public_message("internal_error"), "requestId": request_id}
        }
        return json_response(body, 500)


def _details(details: Callable[[], bool]) -> bool:
    try:
        return details()
    except Exception:  # noqa: BLE001 - unreadable settings: disclose nothing
        return False
