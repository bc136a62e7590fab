"""HTTP routes of the Power BI embed-token function (Azure Functions, Python v2 model).

Thin wiring only: each route parses the request, asks the embed service, and answers
through ``shared.responses``. The service (one MSAL application, one HTTP session,
the token cache) is built on first use and kept for the life of the worker process.
Each handler takes the invocation's ``context``: its ``invocation_id`` is the ``requestId``
of an error answer and of its log line. Every log record of the process is redacted
(``shared.redact``) from import on; telemetry (``shared.telemetry``) is configured at import when
its settings ask for it, and each embed route answers inside its request span.
"""

from __future__ import annotations

import logging
import os
import threading
from typing import Any

import azure.functions as func
import requests

from shared import redact, telemetry
from shared.embed import EmbedService, Kind
from shared.errors import ConfigurationError
from shared.identity import identity_for, principal_id
from shared.openapi import openapi_json
from shared.responses import json_response, respond
from shared.settings import Settings, error_details, http_auth_level

redact.install()
telemetry.start(os.environ)
logger = logging.getLogger(__name__)

app = func.FunctionApp(http_auth_level=func.AuthLevel(http_auth_level(os.environ)))

_service: EmbedService | None = None
_service_lock = threading.Lock()
_session: requests.Session | None = None


def service() -> EmbedService:
    """The worker's one service; the lock stops concurrent cold requests building two."""
    global _service
    if _service is None:
        with _service_lock:
            if _service is None:
                _service = EmbedService.create(Settings.from_env(os.environ), session=_session)
    return _service


def use_service(instance: EmbedService | None) -> None:
    """Install a service (tests build one with a fake clock); None rebuilds from settings."""
    global _service
    _service = instance


def use_session(session: requests.Session | None) -> None:
    """The HTTP session the service is built with (a host may route hosts its own way); None: a new one."""
    global _session
    _session = session


def details() -> bool:
    """Do error answers carry the detailed message? Asked only when there is an error to answer."""
    current = _service
    return current.settings.policy.error_details if current is not None else error_details(os.environ)


def _embed(
    req: func.HttpRequest, context: func.Context, route: str, kind: Kind, ids: str | list[str]
) -> func.HttpResponse:
    def produce() -> dict[str, Any]:
        svc = service()
        # The customer and the row-level-security identity come only from App Service Authentication's headers.
        customer = svc.customer_for(req.headers)
        identity = identity_for(req.headers, svc.settings)
        principal = principal_id(req.headers, svc.settings.budget.platform_signs_in)  # the per-user budget
        params = req.params
        workspace, access = params.get("workspaceId"), params.get("accessLevel")
        return svc.embed(kind, ids, workspace, access, identity, principal, customer).to_json()

    trace = getattr(context, "trace_context", None)
    parent = getattr(trace, "trace_parent", None) or None
    return telemetry.serve(f"/api/{route}", parent, lambda: respond(produce, context.invocation_id, details))


@app.route(route="embed/reports/{reportId}", methods=["GET"])
def embed_report(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return _embed(req, context, "embed/reports/{reportId}", "report", req.route_params.get("reportId", ""))


@app.route(route="embed/reports", methods=["GET"])
def embed_reports(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Several reports under one token: ``?ids=<id>,<id>,...``."""
    return _embed(
        req, context, "embed/reports", "reports", [i for i in req.params.get("ids", "").split(",") if i.strip()]
    )


@app.route(route="embed/dashboards/{dashboardId}", methods=["GET"])
def embed_dashboard(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    return _embed(req, context, "embed/dashboards/{dashboardId}", "dashboard", req.route_params.get("dashboardId", ""))


@app.route(route="embed/dashboards/{dashboardId}/tiles/{tileId}", methods=["GET"])
def embed_tile(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    route = req.route_params
    return _embed(
        req,
        context,
        "embed/dashboards/{dashboardId}/tiles/{tileId}",
        "tile",
        [route.get("dashboardId", ""), route.get("tileId", "")],
    )


@app.route(route="embed/datasets/{datasetId}/create", methods=["GET"])
def embed_create(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """A token to create a new report on a dataset (only with POWERBI_ALLOW_EDIT=true)."""
    return _embed(req, context, "embed/datasets/{datasetId}/create", "create", req.route_params.get("datasetId", ""))


@app.route(route="health", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def health(req: func.HttpRequest, context: func.Context) -> func.HttpResponse:
    """Is the configuration complete and valid? Anonymous (a platform probe carries no key), no upstream
    call, and in production nothing about the configuration; with details on, what is wrong."""
    try:
        settings = service().settings
    except ConfigurationError as error:
        logger.warning("health: misconfigured requestId=%s: %s", context.invocation_id, error.cause)
        body: dict[str, Any] = {"status": "misconfigured", "requestId": context.invocation_id}
        if details():
            body["problems"] = list(error.problems)
        return json_response(body, 500)
    if not settings.policy.error_details:
        return json_response({"status": "ok"})
    return json_response(
        {"status": "ok", "authMode": settings.sign_in.mode, "clientType": settings.sign_in.client_type}
    )


@app.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The OpenAPI document of these routes: anonymous, built from constants, no upstream call."""
    return func.HttpResponse(
        openapi_json(), status_code=200, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )
