"""A small stand-in for the Functions host: serves a FunctionApp's HTTP routes over real HTTP.

For machines without Azure Functions Core Tools (and for the tests). It reads the
routes the app registered (``app.get_functions()``), prefixes them with host.json's
``routePrefix``, matches them with werkzeug's router, builds the same
``func.HttpRequest`` the Python worker would, calls the function, and answers 404
or 405 where the host would. Function keys are enforced only when ``keys`` are
given (``func start`` does not enforce them locally either). In production, and
wherever Core Tools can be installed, use ``func start``.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterable
from typing import Any

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, make_server
from werkzeug.wrappers import Request, Response

_TEMPLATE_PART = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")


def _rule_path(prefix: str, template: str) -> str:
    """Functions route template (``reports/{id}``, ``{id:guid}``, ``{*rest}``) to a werkzeug rule."""
    path = _TEMPLATE_PART.sub(lambda m: f"<{'path:' if m.group(1) else ''}{m.group(2)}>", template.strip("/"))
    return "/" + "/".join(part for part in (prefix.strip("/"), path) if part)


class FunctionRoutes:
    """The app's HTTP functions, routed; ``dispatch`` is the in-process entry point."""

    def __init__(self, app: func.FunctionApp, route_prefix: str = "api", keys: Iterable[str] | None = None) -> None:
        self.keys = set(keys) if keys is not None else None
        self.functions: dict[str, tuple[Callable[[func.HttpRequest], func.HttpResponse], str]] = {}
        rules = []
        app.functions_bindings = None  # get_functions() may otherwise be called once per app
        for function in app.get_functions():
            trigger = function.get_trigger()
            if not isinstance(trigger, HttpTrigger):
                continue
            name = str(function.get_function_name())
            methods = [m.value for m in trigger.methods] if trigger.methods else None  # none listed: any
            route = trigger.route or name
            auth_level = trigger.auth_level.value if trigger.auth_level else "function"
            self.functions[name] = (function.get_user_function(), auth_level)
            rules.append(Rule(_rule_path(route_prefix, route), endpoint=name, methods=methods))
        self.url_map = Map(rules, strict_slashes=False)

    def dispatch(
        self,
        method: str,
        path: str,
        params: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
        body: bytes = b"",
    ) -> func.HttpResponse:
        params, headers = params or {}, headers or {}
        try:
            name, route_params = self.url_map.bind("localhost").match(path, method=method)
        except MethodNotAllowed:
            return func.HttpResponse(status_code=405)
        except NotFound:
            return func.HttpResponse(status_code=404)
        handler, auth_level = self.functions[name]
        if self.keys is not None and auth_level.lower() != "anonymous":
            key = params.get("code") or {k.lower(): v for k, v in headers.items()}.get("x-functions-key")
            if key not in self.keys:
                return func.HttpResponse(status_code=401)
        request = func.HttpRequest(
            method=method,
            url=f"http://localhost{path}",
            headers=headers,
            params=params,
            route_params=route_params,
            body=body,
        )
        return handler(request)

    def wsgi(self, environ: dict[str, Any], start_response: Any) -> Iterable[bytes]:
        request = Request(environ)
        try:
            answer = self.dispatch(
                request.method, request.path, dict(request.args), dict(request.headers), request.get_data()
            )
        except HTTPException as exc:  # malformed requests werkzeug itself refuses
            return exc(environ, start_response)
        response = Response(answer.get_body(), status=answer.status_code, mimetype=answer.mimetype)
        for name, value in answer.headers.items():
            response.headers[name] = value
        return response(environ, start_response)


class LocalHost:
    """Serves ``FunctionRoutes`` on loopback in a background thread (port 0: any free one)."""

    def __init__(self, routes: FunctionRoutes, host: str = "127.0.0.1", port: int = 0) -> None:
        self.server: BaseWSGIServer = make_server(host, port, routes.wsgi, threaded=True)
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.server.host}:{self.server.port}"

    def __enter__(self) -> LocalHost:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
