"""HTTP routes of the Power BI embed-token function (Azure Functions, Python v2 model).

Thin wiring only: each route parses the request, asks the embed service, and answers
through ``shared.responses``. The service (one MSAL application, one HTTP session,
the token cache) is built on first use and kept for the life of the worker process.
"""

from __future__ import annotations

import os
import threading
from typing import Any

import azure.functions as func

from shared.embed import EmbedService, Kind
from shared.identity import identity_for
from shared.openapi import openapi_json
from shared.responses import respond
from shared.settings import Settings, http_auth_level

app = func.FunctionApp(http_auth_level=func.AuthLevel(http_auth_level(os.environ)))

_service: EmbedService | None = None
_service_lock = threading.Lock()


def service() -> EmbedService:
    """The worker's one service; the lock stops concurrent cold requests building two."""
    global _service
    if _service is None:
        with _service_lock:
            if _service is None:
                _service = EmbedService.create(Settings.from_env(os.environ))
    return _service


def use_service(instance: EmbedService | None) -> None:
    """Install a service (tests build one with a fake clock); None rebuilds from settings."""
    global _service
    _service = instance


def _embed(req: func.HttpRequest, kind: Kind, ids: str | list[str]) -> func.HttpResponse:
    def produce() -> dict[str, Any]:
        svc = service()
        # The row-level-security identity comes only from App Service Authentication's headers.
        identity = identity_for(req.headers, svc.settings)
        params = req.params
        return svc.embed(kind, ids, params.get("workspaceId"), params.get("accessLevel"), identity).to_json()

    return respond(produce)


@app.route(route="embed/reports/{reportId}", methods=["GET"])
def embed_report(req: func.HttpRequest) -> func.HttpResponse:
    return _embed(req, "report", req.route_params.get("reportId", ""))


@app.route(route="embed/reports", methods=["GET"])
def embed_reports(req: func.HttpRequest) -> func.HttpResponse:
    """Several reports under one token: ``?ids=<id>,<id>,...``."""
    return _embed(req, "reports", [i for i in req.params.get("ids", "").split(",") if i.strip()])


@app.route(route="embed/dashboards/{dashboardId}", methods=["GET"])
def embed_dashboard(req: func.HttpRequest) -> func.HttpResponse:
    return _embed(req, "dashboard", req.route_params.get("dashboardId", ""))


@app.route(route="embed/dashboards/{dashboardId}/tiles/{tileId}", methods=["GET"])
def embed_tile(req: func.HttpRequest) -> func.HttpResponse:
    route = req.route_params
    return _embed(req, "tile", [route.get("dashboardId", ""), route.get("tileId", "")])


@app.route(route="embed/datasets/{datasetId}/create", methods=["GET"])
def embed_create(req: func.HttpRequest) -> func.HttpResponse:
    """A token to create a new report on a dataset (only with POWERBI_ALLOW_EDIT=true)."""
    return _embed(req, "create", req.route_params.get("datasetId", ""))


@app.route(route="health", methods=["GET"])
def health(req: func.HttpRequest) -> func.HttpResponse:
    """Is the configuration complete and valid? No secrets shown, no upstream call made."""

    def status() -> dict[str, str]:
        settings = service().settings
        return {"status": "ok", "authMode": settings.auth_mode, "clientType": settings.client_type}

    return respond(status)


@app.route(route="openapi.json", methods=["GET"], auth_level=func.AuthLevel.ANONYMOUS)
def openapi(req: func.HttpRequest) -> func.HttpResponse:
    """The OpenAPI document of these routes: anonymous, built from constants, no upstream call."""
    return func.HttpResponse(
        openapi_json(), status_code=200, mimetype="application/json", headers={"Cache-Control": "no-store"}
    )
