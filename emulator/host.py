"""A small stand-in for the Functions host: serves a FunctionApp's HTTP routes over real HTTP.

For machines without Azure Functions Core Tools (and for the tests). It reads the
routes the app registered (``app.get_functions()``), prefixes them with host.json's
``routePrefix``, matches them with werkzeug's router, builds the same
``func.HttpRequest`` the Python worker would, calls the function, and answers 404
or 405 where the host would. Function keys are enforced only when ``keys`` are
given (``func start`` does not enforce them locally either). In production, and
wherever Core Tools can be installed, use ``func start``.

``python -m emulator.host`` runs it as Core Tools' ``func start`` would: it loads
``local.settings.json`` (``Values`` into the environment, ``Host.CORS``,
``Host.CORSCredentials`` and ``Host.LocalHttpPort``), or the emulator profile
(``emulator/profile.json``) when there is none, and serves http://127.0.0.1:7071/api/...
"""

from __future__ import annotations

import argparse
import importlib
import inspect
import json
import logging
import os
import re
import signal
import sys
import threading
import uuid
from collections.abc import Callable, Iterable, Mapping, MutableMapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType, ModuleType
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import azure.functions as func
from azure.functions.decorators.http import HttpTrigger
from werkzeug.exceptions import HTTPException, MethodNotAllowed, NotFound
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIApplication, WSGIEnvironment

logger = logging.getLogger(__name__)

_TEMPLATE_PART = re.compile(r"\{(\*?)([A-Za-z_][A-Za-z0-9_]*)(?::[^}]*)?\}")
DEFAULT_PORT = 7071  # Core Tools' default
PROFILE = Path(__file__).with_name("profile.json")


def _rule_path(prefix: str, template: str) -> str:
    """Functions route template (``reports/{id}``, ``{id:guid}``, ``{*rest}``) to a werkzeug rule."""
    path = _TEMPLATE_PART.sub(lambda m: f"<{'path:' if m.group(1) else ''}{m.group(2)}>", template.strip("/"))
    return "/" + "/".join(part for part in (prefix.strip("/"), path) if part)


_TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-[0-9a-f]{16}-[0-9a-f]{2}$")


@dataclass(frozen=True)
class InvocationTrace:
    """The invocation's W3C trace context, as the worker hands it over (``context.trace_context``)."""

    trace_parent: str
    trace_state: str = ""
    attributes: dict[str, str] = field(default_factory=dict)

    @classmethod
    def for_request(cls, headers: Mapping[str, str]) -> InvocationTrace:
        """The host's own span for the invocation: in the caller's trace when the request carries a valid
        ``traceparent`` (W3C Trace Context, as the Functions host continues it), else in a new trace."""
        found = {k.lower(): v for k, v in headers.items()}
        match = _TRACEPARENT.match(found.get("traceparent", "").strip().lower())
        trace_id = match.group(1) if match else uuid.uuid4().hex
        return cls(f"00-{trace_id}-{uuid.uuid4().hex[:16]}-01", found.get("tracestate", ""))


class InvocationContext(func.Context):
    """The ``func.Context`` the Python worker hands a function that declares a ``context`` parameter."""

    def __init__(self, function_name: str, function_directory: str, trace: InvocationTrace | None = None) -> None:
        self._invocation_id = str(uuid.uuid4())  # the host makes one per invocation
        self._function_name = function_name
        self._function_directory = function_directory
        self._local = threading.local()
        self._trace = trace

    @property
    def invocation_id(self) -> str:
        return self._invocation_id

    @property
    def function_name(self) -> str:
        return self._function_name

    @property
    def function_directory(self) -> str:
        return self._function_directory

    @property
    def thread_local_storage(self) -> Any:
        return self._local

    @property
    def trace_context(self) -> Any:
        return self._trace

    @property
    def retry_context(self) -> Any:
        return None


@dataclass(frozen=True)
class HttpFunction:
    """One registered HTTP function, as the host lists it at start-up."""

    name: str
    route: str  # the template with the route prefix, e.g. "api/embed/reports/{reportId}"
    methods: tuple[str, ...] | None  # None: any method
    auth_level: str


class FunctionRoutes:
    """The app's HTTP functions, routed; ``dispatch`` is the in-process entry point."""

    def __init__(self, app: func.FunctionApp, route_prefix: str = "api", keys: Iterable[str] | None = None) -> None:
        self.keys = set(keys) if keys is not None else None
        self.functions: dict[str, tuple[Callable[..., func.HttpResponse], HttpFunction]] = {}
        self.contexts: list[InvocationContext] = []  # every invocation's context, newest last (tests read it)
        rules = []
        app.functions_bindings = None  # get_functions() may otherwise be called once per app
        for function in app.get_functions():
            trigger = function.get_trigger()
            if not isinstance(trigger, HttpTrigger):
                continue
            name = str(function.get_function_name())
            methods = tuple(m.value for m in trigger.methods) if trigger.methods else None  # none listed: any
            template = trigger.route or name
            auth_level = trigger.auth_level.value if trigger.auth_level else "function"
            route = "/".join(part for part in (route_prefix.strip("/"), template.strip("/")) if part)
            self.functions[name] = (function.get_user_function(), HttpFunction(name, route, methods, auth_level))
            rules.append(Rule(_rule_path(route_prefix, template), endpoint=name, methods=methods))
        self.url_map = Map(rules, strict_slashes=False)

    @property
    def http_functions(self) -> list[HttpFunction]:
        return [described for _, described in self.functions.values()]

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
        handler, described = self.functions[name]
        # werkzeug lets HEAD through to GET rules; the host calls a function only for the methods it declared.
        if described.methods is not None and method.upper() not in described.methods:
            return func.HttpResponse(status_code=405)
        if self.keys is not None and described.auth_level.lower() != "anonymous":
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
        if "context" not in inspect.signature(handler).parameters:
            return handler(request)
        context = InvocationContext(name, os.getcwd(), InvocationTrace.for_request(headers or {}))
        self.contexts.append(context)
        del self.contexts[:-100]  # bounded: only the last ones are of interest
        return handler(request, context=context)

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


@dataclass(frozen=True)
class Cors:
    """The host's CORS policy (``Host.CORS`` / ``--cors``), with the semantics of the ASP.NET Core middleware
    that Core Tools uses: listed origins only, ``*`` only if listed, any method and request headers allowed."""

    origins: tuple[str, ...]
    credentials: bool = False

    @classmethod
    def parse(cls, origins: str, credentials: bool = False) -> Cors | None:
        """A comma-separated origin list; None when it is empty (no CORS: browsers refuse cross-origin reads)."""
        listed = tuple(o.strip().rstrip("/") for o in origins.split(",") if o.strip())
        if not listed:
            return None
        if "*" in listed and credentials:
            # ASP.NET Core refuses this policy too: a credentialed request may not be answered with "*".
            raise ValueError("CORS '*' cannot be combined with CORSCredentials: list the origins instead")
        return cls(listed, credentials)

    @property
    def any_origin(self) -> bool:
        return "*" in self.origins

    def allowed(self, origin: str | None) -> str | None:
        """The Access-Control-Allow-Origin value for a request from ``origin``, or None if it is not allowed."""
        if not origin:
            return None
        if self.any_origin:
            return "*"
        return origin if origin in self.origins else None

    def wrap(self, app: WSGIApplication) -> WSGIApplication:
        """``app`` behind this policy: preflights answered here, allowed origins stamped on every answer."""

        def with_cors(environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
            origin = environ.get("HTTP_ORIGIN")
            allowed = self.allowed(origin)
            stamp = [] if self.any_origin else [("Vary", "Origin")]
            if allowed:
                stamp.append(("Access-Control-Allow-Origin", allowed))
                if self.credentials:
                    stamp.append(("Access-Control-Allow-Credentials", "true"))
            requested = environ.get("HTTP_ACCESS_CONTROL_REQUEST_METHOD")
            if environ["REQUEST_METHOD"] == "OPTIONS" and origin and requested:
                # A preflight never reaches the functions; a refused origin gets no Allow headers.
                if allowed:
                    stamp.append(("Access-Control-Allow-Methods", requested))
                    if asked := environ.get("HTTP_ACCESS_CONTROL_REQUEST_HEADERS"):
                        stamp.append(("Access-Control-Allow-Headers", asked))
                start_response("204 No Content", stamp)
                return [b""]

            def start(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
                return start_response(status, [*headers, *stamp], exc_info)

            return app(environ, start)

        return with_cors


class _RequestLog(WSGIRequestHandler):
    """One log line per request, without the query string: a function key (``?code=``) is a secret."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        logger.info("%s %s -> %s", self.command, urlsplit(self.path).path, code)


class LocalHost:
    """Serves ``FunctionRoutes`` on loopback in a background thread (port 0: any free one)."""

    def __init__(
        self, routes: FunctionRoutes, host: str = "127.0.0.1", port: int = 0, cors: Cors | None = None
    ) -> None:
        app: WSGIApplication = routes.wsgi
        self.server: BaseWSGIServer = make_server(
            host, port, cors.wrap(app) if cors else app, threaded=True, request_handler=_RequestLog
        )
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


# -- settings, as Core Tools reads them ---------------------------------------------------------------------


@dataclass(frozen=True)
class LocalSettings:
    """A ``local.settings.json`` (or the emulator profile, shaped the same)."""

    path: Path
    values: Mapping[str, str] = field(repr=False)  # may hold secrets
    cors: str = ""
    cors_credentials: bool = False
    port: int | None = None

    @classmethod
    def load(cls, path: Path) -> LocalSettings:
        """Raises ValueError naming the file and the problem (never a value)."""
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise ValueError(f"{path}: cannot read it as JSON ({type(exc).__name__})") from None
        if not isinstance(data, dict):
            raise ValueError(f"{path}: expected a JSON object with 'Values'")
        if data.get("IsEncrypted"):
            raise ValueError(f"{path}: IsEncrypted is true; decrypt it first (func settings decrypt)")
        values: dict[str, str] = {}
        for name, value in (data.get("Values") or {}).items():
            if isinstance(value, bool):  # before int: bool is an int
                values[name] = "true" if value else "false"
            elif isinstance(value, str | int | float):
                values[name] = str(value)
            elif value is not None:
                raise ValueError(f"{path}: Values.{name} must be a string")
        host = data.get("Host") or {}
        port = host.get("LocalHttpPort")
        return cls(
            path=path,
            values=values,
            cors=str(host.get("CORS") or ""),
            cors_credentials=host.get("CORSCredentials") in (True, "true", "True"),
            port=int(port) if port else None,
        )

    def apply(self, environ: MutableMapping[str, str], *, override: bool) -> list[str]:
        """Put ``Values`` into ``environ``; returns the names skipped because the environment already set them.

        Core Tools keeps a variable already set in the environment (and says so); the emulator profile
        ``override``s, since it must point the function at the emulator whatever the shell has set
        (this machine, for one, presets REQUESTS_CA_BUNDLE).
        """
        skipped = []
        for name, value in self.values.items():
            if environ.get(name) and not override:
                skipped.append(name)
            else:
                environ[name] = value
        return skipped


def route_prefix(host_json: Path) -> str:
    """host.json's ``extensions.http.routePrefix``: "api" when absent, and may be empty."""
    try:
        data = json.loads(host_json.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return "api"
    prefix = (data.get("extensions") or {}).get("http", {}).get("routePrefix")
    return "api" if prefix is None else str(prefix)


def find_app(module: ModuleType) -> func.FunctionApp:
    """The FunctionApp a module defines, as the Python worker finds it in function_app.py."""
    apps = [value for value in vars(module).values() if isinstance(value, func.FunctionApp)]
    if len(apps) != 1:
        raise ValueError(f"{module.__name__} must define exactly one FunctionApp; it defines {len(apps)}")
    return apps[0]


def stop_on_signals() -> threading.Event:
    """An event that Ctrl-C (SIGINT) or SIGTERM sets; installed even where SIGINT was inherited as ignored."""
    stop = threading.Event()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)
    return stop


def _describe(host: LocalHost, routes: FunctionRoutes) -> str:
    lines = ["Functions:", ""]
    for f in routes.http_functions:
        methods = ",".join(f.methods) if f.methods else "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
        lines.append(f"        {f.name}: [{methods}] {host.url}/{f.route}")
    return "\n".join(lines)


_DESCRIPTION = """\
Serve this function app's HTTP functions at http://127.0.0.1:7071/api/... the way Core Tools'
`func start` does: Values from local.settings.json go into the environment (a variable already set
wins, as with Core Tools), host.json's routePrefix, the functions' route templates and methods,
Host.CORS and Host.CORSCredentials, 404 and 405 like the host. Function keys are not enforced,
as with `func start`.

This is a stand-in for machines without Azure Functions Core Tools (and for the tests). It never
replaces `func start`, which runs the real host and Python worker: use that wherever Core Tools
can be installed, and deploy with Core Tools or your pipeline as docs/deploying.md says."""

_EPILOG = """\
Without local.settings.json (or with --emulator) it uses emulator/profile.json, whose values point the
function at the local emulator (`python -m emulator.server --port 8443 --ca-pem .emulator/ca.pem`)
and win over the environment. Run it from the function app's folder."""


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m emulator.host",
        description=_DESCRIPTION,
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--port", type=int, help=f"port on 127.0.0.1 (default: Host.LocalHttpPort or {DEFAULT_PORT})")
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--settings", type=Path, help="settings file (default: ./local.settings.json)")
    source.add_argument("--emulator", action="store_true", help="use the emulator profile even if there is a file")
    parser.add_argument("--cors", help="comma-separated CORS origins (default: Host.CORS)")
    parser.add_argument(
        "--cors-credentials",
        action="store_true",
        default=None,
        help="allow credentials (default: Host.CORSCredentials)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = _arguments(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    path = args.settings or Path("local.settings.json")
    profile = args.emulator or (args.settings is None and not path.exists())
    if profile:
        path = PROFILE
        why = "As asked" if args.emulator else "No local.settings.json here"
        print(f"{why}: using the emulator profile {PROFILE}.", flush=True)
    try:
        settings = LocalSettings.load(path)
        cors = Cors.parse(
            args.cors if args.cors is not None else settings.cors,
            args.cors_credentials if args.cors_credentials is not None else settings.cors_credentials,
        )
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    for name in settings.apply(os.environ, override=profile):
        print(f"Skipping '{name}' from local settings as it's already defined in current environment variables.")
    os.environ.setdefault("AZURE_FUNCTIONS_ENVIRONMENT", "Development")  # as Core Tools sets it
    sys.path.insert(0, os.getcwd())
    # Imported only now: function_app reads settings (POWERBI_HTTP_AUTH_LEVEL) at import time.
    module = importlib.import_module("function_app")
    authority = os.environ.get("POWERBI_AUTHORITY_HOST", "")
    if urlsplit(authority).port not in (None, 443) and hasattr(module, "use_session"):
        # An emulator on its own port: MSAL's port-less user-realm URL must reach it too.
        from emulator.entra import emulator_session

        module.use_session(emulator_session(authority))
    routes = FunctionRoutes(find_app(module), route_prefix(Path("host.json")))
    port = args.port if args.port is not None else settings.port or DEFAULT_PORT
    try:
        host = LocalHost(routes, port=port, cors=cors)
    except OSError as exc:
        print(f"error: cannot listen on 127.0.0.1:{port} ({exc.strerror}): is another host running?", file=sys.stderr)
        return 1
    stop = stop_on_signals()
    with host:
        cors_note = ", ".join(cors.origins) if cors else "none (Host.CORS is empty)"
        print(f"{_describe(host, routes)}\n\nCORS origins: {cors_note}\nListening on {host.url}. Ctrl-C to stop.")
        sys.stdout.flush()
        stop.wait()
    print("Stopped.", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
