"""A fake of Microsoft Entra ID (v2 token endpoints) and the Power BI REST API.

``FakeUpstream`` is a real HTTPS server on loopback that speaks Microsoft's documented wire formats, so tests
can drive it with the *real* ``msal`` and ``requests`` clients instead of mocks.  It also runs standalone as a
local emulator: ``python -m emulator.server --port 8443 --ca-pem ca.pem``.

What it fakes:

* Entra ID: OpenID discovery, user-realm discovery and the ``password``, ``client_credentials`` and
  ``refresh_token`` grants, with Entra-shaped ``AADSTS`` errors (natural ones, or forced via ``fail_sign_in``).
* Power BI: Get Report / Get Dashboard In Group, Embed Token - Generate Token (V2, multi-resource) and
  Dashboards GenerateTokenInGroup, all behind bearer tokens issued by the fake Entra.

Every request is recorded (``requests`` / ``calls()``), and upstream trouble can be scripted with
``fault()`` / ``throttle()`` / ``latency``.
"""

from __future__ import annotations

import argparse
import base64
import copy
import json
import secrets
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import trustme
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map, Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment

# Default identities and catalogue (lowercase GUIDs, as Power BI returns them).
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "8c1f7d6e-2b4a-4e0f-9d3c-5a6b7c8d9e01"
CLIENT_SECRET = "fake-client-secret"
PUBLIC_CLIENT_ID = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9"
USERNAME = "embed.user@contoso.com"
PASSWORD = "correct horse battery staple"
WORKSPACE_ID = "f089354e-8366-4e18-aea3-4cb4a3a50b48"
REPORT_ID = "5b218778-e7a5-4d73-8187-f10824047715"
DATASET_ID = "cfafbeb1-8037-4d0c-896e-a46fb27ff229"
DASHBOARD_ID = "69ffaa6c-b36d-4d01-96f5-1ed67c64d4af"
OTHER_WORKSPACE_ID = "3d9b93c6-7b6d-4801-a491-1738910904fd"
OTHER_REPORT_ID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"
OTHER_DATASET_ID = "d4c3b2a1-6f5e-4b7a-9d8c-5c4b3a2f1e0d"
POWERBI_RESOURCE = "https://analysis.windows.net/powerbi/api"

DEFAULT_CATALOG: dict[str, Any] = {
    "workspaces": [
        {
            "id": WORKSPACE_ID,
            "name": "Sales",
            "datasets": [{"id": DATASET_ID, "name": "Sales"}],
            "reports": [{"id": REPORT_ID, "name": "Sales Overview", "datasetId": DATASET_ID}],
            "dashboards": [{"id": DASHBOARD_ID, "displayName": "Sales Dashboard"}],
        },
        {
            "id": OTHER_WORKSPACE_ID,
            "name": "Finance",
            "datasets": [{"id": OTHER_DATASET_ID, "name": "Budget"}],
            "reports": [{"id": OTHER_REPORT_ID, "name": "Budget", "datasetId": OTHER_DATASET_ID}],
            "dashboards": [],
        },
    ]
}

# Base64 of {"clusterUrl": ...}, exactly as the service appends it to embed URLs.
_EMBED_CONFIG = (
    "eyJjbHVzdGVyVXJsIjoiaHR0cHM6Ly9XQUJJLVVTLU5PUlRILUNFTlRSQUwtcmVkaXJlY3QuYW5hbHlzaXMud2luZG93cy5uZXQifQ%3d%3d"
)
_PBI_RESOURCE_APP_ID = "00000009-0000-0000-c000-000000000000"  # the Power BI Service app, named in MFA errors
_OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}  # Entra leaves these out of "scope" in answers
_GENERATE_TOKEN_CONTEXT = (
    "http://api.powerbi.com/v1.0/myorg/$metadata#Microsoft.PowerBI.ServiceContracts.Api.V1.GenerateTokenResponse"
)

# AADSTS code -> (OAuth error, Microsoft's message); placeholders are filled from the request.
_MFA = "Due to a configuration change made by your administrator, or because you moved to a new location, you must"
_AADSTS: dict[int, tuple[str, str]] = {
    50034: (
        "invalid_grant",
        "The user account {user} does not exist in the {tenant} directory. To sign into this "
        "application, the account must be added to the directory.",
    ),
    50076: ("invalid_grant", f"{_MFA} use multi-factor authentication to access '{_PBI_RESOURCE_APP_ID}'."),
    50079: ("invalid_grant", f"{_MFA} enroll in multi-factor authentication to access '{_PBI_RESOURCE_APP_ID}'."),
    50126: ("invalid_grant", "Error validating credentials due to invalid username or password."),
    53003: (
        "invalid_grant",
        "Access has been blocked by Conditional Access policies. The access policy does not allow token issuance.",
    ),
    65001: (
        "invalid_grant",
        "The user or administrator has not consented to use the application with ID "
        "'{client}' named '{client}'. Send an interactive authorization request for this user and resource.",
    ),
    70000: ("invalid_grant", "Provided grant is invalid or malformed."),
    70003: ("unsupported_grant_type", "The app requested an unsupported grant type '{grant}'."),
    90002: (
        "invalid_request",
        "Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and "
        "are signing into the correct cloud.",
    ),
    700016: (
        "unauthorized_client",
        "Application with identifier '{client}' was not found in the directory "
        "'{tenant}'. This can happen if the application has not been installed by the administrator of the "
        "tenant or consented to by any user in the tenant. You may have sent your authentication request to "
        "the wrong tenant.",
    ),
    700025: (
        "invalid_client",
        "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
    ),
    900144: ("invalid_request", "The request body must contain the following parameter: '{param}'."),
    1002012: (
        "invalid_scope",
        "The provided value for scope {scope} is not valid. Client credential flows must have "
        "a scope value with /.default suffixed to the resource identifier (application ID URI).",
    ),
    7000215: (
        "invalid_client",
        "Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app '{client}'.",
    ),
    7000218: (
        "invalid_client",
        "The request body must contain the following parameter: 'client_assertion' or 'client_secret'.",
    ),
    7000222: (
        "invalid_client",
        "The provided client secret keys for app '{client}' are expired. Visit the Azure "
        "portal to create new keys for your app: https://aka.ms/NewClientSecret.",
    ),
    9002313: ("invalid_request", "Invalid request. Request is malformed or invalid."),
}


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    form: dict[str, str]  # urlencoded bodies only
    json: Any  # parsed JSON body, or None


@dataclass(frozen=True)
class IssuedAccessToken:
    principal: str  # username, or client_id for client_credentials
    client_id: str
    expires_at: float  # epoch seconds
    scope: str


@dataclass(frozen=True)
class IssuedEmbedToken:
    token_id: str
    expires_at: float  # epoch seconds
    expiration: str  # as sent on the wire
    body: dict[str, Any]
    principal: str


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    headers: dict[str, str]
    body: Any
    times: int
    hang: float


@dataclass(frozen=True)
class _Req:
    """Marks a required property in a body schema."""

    spec: Any


# Request schemas from the Power BI REST reference.  A dict is an object with a closed set of properties,
# [x] a list of x, a tuple an enum, a type a scalar.
_IDENTITY = {
    "username": str,
    "roles": [str],
    "datasets": [str],
    "reports": [str],
    "customData": str,
    "identityBlob": {"value": _Req(str)},
}
_V2_SCHEMA = {  # GenerateTokenRequestV2
    "datasets": [{"id": _Req(str), "xmlaPermissions": ("Off", "ReadOnly")}],
    "reports": [{"id": _Req(str), "allowEdit": bool}],
    "targetWorkspaces": [{"id": _Req(str)}],
    "identities": [_IDENTITY],
    "lifetimeInMinutes": int,
    "datasourceIdentities": [{"datasources": [dict], "identityBlob": _Req(str)}],
}
_DASHBOARD_SCHEMA = {
    "accessLevel": ("View", "Edit", "Create"),
    "allowSaveAs": bool,
    "datasetId": str,
    "identities": [_IDENTITY],
    "lifetimeInMinutes": int,
}  # GenerateTokenRequest


def _schema_error(value: Any, spec: Any, where: str) -> str | None:
    """Why ``value`` violates ``spec``, or None.  Property names match case-sensitively: stricter than the
    service, on purpose, so that a misspelt property fails loudly in tests."""
    if isinstance(spec, _Req):
        spec = spec.spec
    if isinstance(spec, dict):
        if not isinstance(value, dict):
            return f"'{where}' must be an object"
        missing = [k for k, v in spec.items() if isinstance(v, _Req) and k not in value]
        if missing:
            return f"'{where}.{missing[0]}' is required"
        for key, item in value.items():
            if key not in spec:
                return f"Unknown property '{where}.{key}'"
            if (err := _schema_error(item, spec[key], f"{where}.{key}")) is not None:
                return err
        return None
    if isinstance(spec, list):
        if not isinstance(value, list):
            return f"'{where}' must be an array"
        errors = (_schema_error(x, spec[0], f"{where}[{i}]") for i, x in enumerate(value))
        return next((e for e in errors if e is not None), None)
    if isinstance(spec, tuple):
        return None if value in spec else f"'{where}' must be one of {', '.join(spec)}"
    # bool is a subclass of int, but JSON true is not a valid Int32.
    if not isinstance(value, spec) or (spec is int and isinstance(value, bool)):
        return f"'{where}' must be of type {spec.__name__}"
    return None


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _iso(epoch: float) -> str:
    """ISO 8601 UTC with seconds precision; truncating never extends a lifetime."""
    return datetime.fromtimestamp(int(epoch), UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _json(status: int, body: Any, headers: dict[str, str] | None = None) -> Response:
    return Response(json.dumps(body), status=status, headers=headers, content_type="application/json; charset=utf-8")


def _pbi_error(status: int, code: str, message: str | None = None) -> Response:
    if message is None:  # the service's shape for entity errors carries no message
        pbi = {"code": code, "parameters": {}, "details": [], "exceptionCulprit": 1}
        return _json(status, {"error": {"code": code, "pbi.error": pbi}})
    return _json(status, {"error": {"code": code, "message": message}})


_ROUTES = Map(
    [
        Rule("/<tenant>/v2.0/.well-known/openid-configuration", endpoint="openid", methods=["GET"]),
        Rule("/common/userrealm/<path:username>", endpoint="userrealm", methods=["GET"]),
        Rule("/<tenant>/oauth2/v2.0/token", endpoint="token", methods=["POST"]),
        Rule("/v1.0/myorg/groups/<group>/reports/<item>", endpoint="report", methods=["GET"]),
        Rule("/v1.0/myorg/groups/<group>/dashboards/<item>", endpoint="dashboard", methods=["GET"]),
        Rule("/v1.0/myorg/GenerateToken", endpoint="generate_v2", methods=["POST"]),
        Rule(
            "/v1.0/myorg/groups/<group>/dashboards/<item>/GenerateToken",
            endpoint="generate_dashboard",
            methods=["POST"],
        ),
    ]
)


class _QuietRequestHandler(WSGIRequestHandler):
    """Skips werkzeug's per-request access log (errors are still logged); the fake records requests itself."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class FakeUpstream:
    """Fake Entra ID + Power BI REST over HTTPS on 127.0.0.1 (see the module docstring).

    Public attributes may be changed by tests at any time; one lock serialises access to shared state so the
    threaded server stays consistent.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        ca: trustme.CA | None = None,
        catalog: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        log_requests: bool = False,
    ) -> None:
        self.ca = ca or trustme.CA()
        self.port = port  # 0 = ephemeral; the real port once started
        self.clock = clock
        self.catalog: dict[str, Any] = copy.deepcopy(catalog or DEFAULT_CATALOG)
        self.tenant_guid = TENANT_ID
        self.clients: dict[str, str | None] = {CLIENT_ID: CLIENT_SECRET, PUBLIC_CLIENT_ID: None}  # None = public
        self.users: dict[str, str] = {USERNAME: PASSWORD}
        self.allow_public_client_flows = False  # lets a confidential client omit its secret in user flows
        self.access_token_lifetime = 3600
        self.next_lifetimes: list[int] = []  # queue: overrides the lifetime of the next tokens issued
        self.fail_sign_in: list[int] = []  # queue of AADSTS codes for the next token requests
        self.embed_token_default_minutes = 60
        self.latency = 0.0  # seconds added to every Power BI answer
        self.requests: list[Recorded] = []
        self.issued_request_ids: list[str] = []
        self.access_tokens: dict[str, IssuedAccessToken] = {}
        self.refresh_tokens: dict[str, tuple[str, str]] = {}  # token -> (username, client_id)
        self.embed_tokens: dict[str, IssuedEmbedToken] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._log_requests = log_requests
        self._stopping = threading.Event()  # wakes hanging handlers on stop(), so stop() never blocks
        self._server: BaseWSGIServer | None = None
        self._thread: threading.Thread | None = None

    @classmethod
    def from_catalog_file(cls, path: str | Path, **kwargs: Any) -> Self:
        """A fake whose catalogue is read from a JSON file shaped like DEFAULT_CATALOG."""
        return cls(catalog=json.loads(Path(path).read_text(encoding="utf-8")), **kwargs)

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._server is not None:
            return self
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
        self._stopping.clear()
        handler = None if self._log_requests else _QuietRequestHandler
        self._server = make_server(
            "127.0.0.1", self.port, self._wsgi, threaded=True, ssl_context=ctx, request_handler=handler
        )
        self.port = self._server.server_port
        name = f"FakeUpstream:{self.port}"
        self._thread = threading.Thread(target=self._server.serve_forever, name=name, daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
        self._server = self._thread = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        # "localhost", not 127.0.0.1: MSAL derives the userrealm URL from the authority's hostname.
        return f"https://localhost:{self.port}"

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def write_ca_pem(self, path: str | Path) -> Path:
        """Write the CA certificate (PEM), e.g. for REQUESTS_CA_BUNDLE / SSL_CERT_FILE."""
        self.ca.cert_pem.write_to_path(str(path))
        return Path(path)

    # -- recording and fault injection ---------------------------------------------------------------------

    def calls(self, method: str | None = None, path_contains: str | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and (path_contains is None or path_contains in r.path)
            ]

    @property
    def token_calls(self) -> list[Recorded]:
        return self.calls("POST", "/oauth2/v2.0/token")

    def reset_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.issued_request_ids.clear()

    def clear_faults(self) -> None:
        """Drop scripted behaviour: faults, fail_sign_in, next_lifetimes and latency."""
        with self._lock:
            self._faults.clear()
            self.fail_sign_in.clear()
            self.next_lifetimes.clear()
            self.latency = 0.0

    def reset(self) -> None:
        """Records and scripted behaviour; issued tokens stay valid."""
        self.reset_records()
        self.clear_faults()

    def fault(
        self,
        method: str,
        path_contains: str,
        *,
        status: int,
        headers: dict[str, str] | None = None,
        body: Any = None,
        times: int = 1,
        hang: float = 0.0,
    ) -> None:
        """Answer the next ``times`` requests matching ``method`` ("*" = any) and ``path_contains`` with
        ``status``/``headers``/``body`` (a default error body if None), after ``hang`` seconds."""
        with self._lock:
            self._faults.append(_Fault(method.upper(), path_contains, status, dict(headers or {}), body, times, hang))

    def throttle(self, path_contains: str, retry_after: int = 1, times: int = 1, method: str = "*") -> None:
        """Queue Power BI's throttling answer (429 + Retry-After)."""
        message = (
            "You have exceeded the amount of requests allowed in the current time frame and further requests "
            f"will fail. Retry in {retry_after} seconds."
        )
        self.fault(
            method,
            path_contains,
            status=429,
            times=times,
            headers={"Retry-After": str(retry_after)},
            body={"error": {"code": "TooManyRequests", "message": message}},
        )

    def _take_fault(self, method: str, path: str) -> _Fault | None:
        with self._lock:
            for f in self._faults:
                if f.method in ("*", method) and f.path_contains in path:
                    f.times -= 1
                    if f.times <= 0:
                        self._faults.remove(f)
                    return f
        return None

    # -- WSGI plumbing -------------------------------------------------------------------------------------

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse) -> Iterable[bytes]:
        request = Request(environ)
        is_form = request.mimetype == "application/x-www-form-urlencoded"
        form = request.form.to_dict() if is_form else {}
        try:
            body = None if is_form or not request.get_data() else json.loads(request.get_data())
        except ValueError:
            body = None
        with self._lock:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(Recorded(request.method, request.path, request.args.to_dict(), headers, form, body))
        is_pbi = request.path.startswith("/v1.0/")
        fault = self._take_fault(request.method, request.path)
        delay = (fault.hang if fault else 0.0) + (self.latency if is_pbi else 0.0)
        if delay > 0:
            self._stopping.wait(delay)  # not time.sleep: stop() must cut it short
        if fault is None:
            response = self._dispatch(request, body)
        else:
            fault_body = self._default_fault_body(fault.status, is_pbi) if fault.body is None else fault.body
            response = _json(fault.status, fault_body, fault.headers)
        if is_pbi:  # Power BI stamps every answer, errors included, with a RequestId
            request_id = str(uuid.uuid4())
            response.headers["RequestId"] = request_id
            with self._lock:
                self.issued_request_ids.append(request_id)
        return response(environ, start_response)

    @staticmethod
    def _default_fault_body(status: int, is_pbi: bool) -> Any:
        phrase = HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else "Error"
        if is_pbi:
            return {"error": {"code": phrase.replace(" ", ""), "message": phrase}}
        return {"error": "server_error" if status >= 500 else "invalid_request", "error_description": phrase}

    def _dispatch(self, request: Request, body: Any) -> Response:
        try:
            endpoint, args = _ROUTES.bind_to_environ(request.environ).match()
        except HTTPException as exc:
            return _pbi_error(exc.code or 404, type(exc).__name__, exc.description)
        with self._lock:
            handler: Callable[..., Response] = getattr(self, f"_ep_{endpoint}")
            return handler(request, body, **args)

    # -- Entra ID ------------------------------------------------------------------------------------------

    def _ep_openid(self, request: Request, body: Any, tenant: str) -> Response:
        base = f"{self.base_url}/{tenant}"  # MSAL requires the issuer's host to be the authority's host
        return _json(
            200,
            {
                "issuer": f"{base}/v2.0",
                "authorization_endpoint": f"{base}/oauth2/v2.0/authorize",
                "token_endpoint": f"{base}/oauth2/v2.0/token",
                "device_authorization_endpoint": f"{base}/oauth2/v2.0/devicecode",
                "end_session_endpoint": f"{base}/oauth2/v2.0/logout",
                "jwks_uri": f"{base}/discovery/v2.0/keys",
                "response_types_supported": ["code", "id_token", "code id_token", "id_token token"],
                "scopes_supported": ["openid", "profile", "email", "offline_access"],
                "token_endpoint_auth_methods_supported": [
                    "client_secret_post",
                    "private_key_jwt",
                    "client_secret_basic",
                ],
                "tenant_region_scope": None,
                "cloud_instance_name": "microsoftonline.com",
            },
        )

    def _ep_userrealm(self, request: Request, body: Any, username: str) -> Response:
        # Entra answers "Managed" even for users it does not know.
        return _json(
            200,
            {
                "ver": "1.0",
                "account_type": "Managed",
                "domain_name": username.rpartition("@")[2],
                "cloud_instance_name": "microsoftonline.com",
                "cloud_audience_urn": "urn:federation:MicrosoftOnline",
            },
        )

    def _entra_error(self, request: Request, code: int, **context: str) -> Response:
        error, template = _AADSTS.get(code, ("invalid_request", "Injected sign-in failure."))
        fields = {"user": "", "tenant": "", "client": "", "grant": "", "param": "", "scope": ""}
        stamp = datetime.fromtimestamp(self.clock(), UTC).strftime("%Y-%m-%d %H:%M:%SZ")
        trace = str(uuid.uuid4())
        # Entra echoes the caller's client-request-id as the correlation id.
        correlation = request.headers.get("client-request-id") or str(uuid.uuid4())
        description = (
            f"AADSTS{code}: {template.format(**(fields | context))}\r\n"
            f"Trace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {stamp}"
        )
        return _json(
            401 if error == "invalid_client" else 400,
            {
                "error": error,
                "error_description": description,
                "error_codes": [code],
                "timestamp": stamp,
                "trace_id": trace,
                "correlation_id": correlation,
                "error_uri": f"{self.base_url}/error?code={code}",
            },
        )

    def _ep_token(self, request: Request, body: Any, tenant: str) -> Response:
        form = request.form
        grant = form.get("grant_type", "")
        client_id, secret = form.get("client_id", ""), form.get("client_secret")
        if request.authorization and request.authorization.type == "basic":  # client_secret_basic
            client_id, secret = request.authorization.username or client_id, request.authorization.password
        ctx = {"tenant": tenant, "client": client_id, "grant": grant}
        if self.fail_sign_in:
            return self._entra_error(request, self.fail_sign_in.pop(0), **ctx)
        required = {
            "password": ("username", "password", "scope"),
            "client_credentials": ("scope",),
            "refresh_token": ("refresh_token",),
        }
        for param in ("grant_type", "client_id", *required.get(grant, ())):
            if not (form.get(param) or (param == "client_id" and client_id)):
                return self._entra_error(request, 900144, param=param, **ctx)
        if grant not in required:
            return self._entra_error(request, 70003, **ctx)
        if client_id not in self.clients:
            return self._entra_error(request, 700016, **ctx)
        expected = self.clients[client_id]
        if expected is None and secret is not None:
            return self._entra_error(request, 700025, **ctx)
        user_flow = grant != "client_credentials"
        if expected is not None and secret is None and not (user_flow and self.allow_public_client_flows):
            return self._entra_error(request, 7000218, **ctx)
        if expected is not None and secret is not None and secret != expected:
            return self._entra_error(request, 7000215, **ctx)
        scopes = [s for s in form.get("scope", "").split() if s not in _OIDC_SCOPES]
        if grant == "client_credentials":
            if len(scopes) != 1 or not scopes[0].endswith("/.default"):
                return self._entra_error(request, 1002012, scope=form["scope"], **ctx)
            return _json(200, self._issue(client_id, client_id, scopes, user=None))
        if grant == "password":
            user = form["username"]
            if user not in self.users:
                return self._entra_error(request, 50034, user=user, **ctx)
            if self.users[user] != form["password"]:
                return self._entra_error(request, 50126, **ctx)
        else:
            user, rt_client = self.refresh_tokens.get(form["refresh_token"], ("", ""))
            if rt_client != client_id or user not in self.users:
                return self._entra_error(request, 70000, **ctx)
            scopes = scopes or [f"{POWERBI_RESOURCE}/.default"]
        return _json(200, self._issue(user, client_id, scopes, user=user))

    def _issue(self, principal: str, client_id: str, scopes: list[str], user: str | None) -> dict[str, Any]:
        lifetime = self.next_lifetimes.pop(0) if self.next_lifetimes else self.access_token_lifetime
        now = int(self.clock())
        token, scope = "fake-at-" + secrets.token_urlsafe(32), " ".join(scopes)
        self.access_tokens[token] = IssuedAccessToken(principal, client_id, now + lifetime, scope)
        answer: dict[str, Any] = {
            "token_type": "Bearer",
            "scope": scope,
            "expires_in": lifetime,
            "ext_expires_in": lifetime,
            "access_token": token,
        }
        if user is None:
            return answer
        refresh = "fake-rt-" + secrets.token_urlsafe(32)
        self.refresh_tokens[refresh] = (user, client_id)
        oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{user}"))
        claims = {
            "aud": client_id,
            "iss": f"{self.base_url}/{self.tenant_guid}/v2.0",
            "iat": now,
            "nbf": now,
            "exp": now + lifetime,
            "name": user.partition("@")[0],
            "oid": oid,
            "preferred_username": user,
            "sub": _b64url(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}|{client_id}").bytes),  # pairwise per app
            "tid": self.tenant_guid,
            "ver": "2.0",
        }
        header = _b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())  # unsigned: MSAL does not verify it
        answer.update(
            refresh_token=refresh,
            id_token=f"{header}.{_b64url(json.dumps(claims).encode())}.",
            client_info=_b64url(json.dumps({"uid": oid, "utid": self.tenant_guid}).encode()),
        )
        return answer

    # -- Power BI ------------------------------------------------------------------------------------------

    def _bearer(self, request: Request) -> IssuedAccessToken | Response:
        """The caller's Entra token, or the 401 Power BI answers without a valid one for its resource."""
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        issued = self.access_tokens.get(token) if scheme.lower() == "bearer" else None
        if issued is not None and issued.expires_at > self.clock() and POWERBI_RESOURCE in issued.scope:
            return issued
        if issued is not None and issued.expires_at <= self.clock():
            response = _pbi_error(401, "TokenExpired", "Access token has expired, resubmit with a new access token")
        else:
            response = _pbi_error(401, "PowerBINotAuthorizedException", "The bearer token is missing or not valid")
        response.headers["WWW-Authenticate"] = (
            f'Bearer authorization_uri={self.base_url}/common/oauth2/authorize, error="invalid_token"'
        )
        return response

    def _find(self, kind: str, item_id: str, group: str | None = None) -> dict[str, Any] | None:
        """Look up a report/dashboard/dataset/workspace; GUIDs compare case-insensitively."""
        for ws in self.catalog.get("workspaces", []):
            if group is not None and ws["id"].lower() != group.lower():
                continue
            items: list[dict[str, Any]] = [ws] if kind == "workspaces" else list(ws.get(kind, []))
            if kind == "datasets":  # datasets are implied by the reports bound to them
                items += [{"id": r["datasetId"]} for r in ws.get("reports", [])]
            found = next((i for i in items if i["id"].lower() == item_id.lower()), None)
            if found is not None:
                return found
        return None

    def _ep_report(self, request: Request, body: Any, group: str, item: str) -> Response:
        if isinstance(bearer := self._bearer(request), Response):
            return bearer
        if (report := self._find("reports", item, group)) is None:
            return _pbi_error(404, "PowerBIEntityNotFound")
        rid, g = report["id"], group.lower()
        return _json(
            200,
            {
                "@odata.context": f"https://api.powerbi.com/v1.0/myorg/groups/{g}/$metadata#reports/$entity",
                "id": rid,
                "reportType": "PowerBIReport",
                "name": report["name"],
                "webUrl": f"https://app.powerbi.com/groups/{g}/reports/{rid}",
                "embedUrl": f"https://app.powerbi.com/reportEmbed?reportId={rid}&groupId={g}&w=2&config={_EMBED_CONFIG}",
                "isFromPbix": True,
                "isOwnedByMe": True,
                "datasetId": report["datasetId"],
                "datasetWorkspaceId": g,
                "users": [],
                "subscriptions": [],
            },
        )

    def _ep_dashboard(self, request: Request, body: Any, group: str, item: str) -> Response:
        if isinstance(bearer := self._bearer(request), Response):
            return bearer
        if (dash := self._find("dashboards", item, group)) is None:
            return _pbi_error(404, "PowerBIEntityNotFound")
        did, g = dash["id"], group.lower()
        return _json(
            200,
            {
                "id": did,
                "displayName": dash["displayName"],
                "isReadOnly": False,
                "webUrl": f"https://app.powerbi.com/groups/{g}/dashboards/{did}",
                "embedUrl": f"https://app.powerbi.com/dashboardEmbed?dashboardId={did}&groupId={g}&w=2&config={_EMBED_CONFIG}",
                "users": [],
                "subscriptions": [],
            },
        )

    def _validated(self, body: Any, schema: dict[str, Any]) -> Response | None:
        """400 InvalidRequest for a body that breaks the published request schema."""
        error = _schema_error(body, schema, "request") if body is not None else "The request body must be JSON"
        if error is None and body.get("lifetimeInMinutes", 1) <= 0:
            error = "'request.lifetimeInMinutes' must be a positive integer"
        return None if error is None else _pbi_error(400, "InvalidRequest", error)

    def _ep_generate_v2(self, request: Request, body: Any) -> Response:
        if isinstance(bearer := self._bearer(request), Response):
            return bearer
        if (invalid := self._validated(body, _V2_SCHEMA)) is not None:
            return invalid
        reports, datasets = body.get("reports", []), body.get("datasets", [])
        if not reports and not datasets:
            return _pbi_error(400, "InvalidRequest", "At least one report or dataset is required")
        wanted = [("reports", r["id"]) for r in reports] + [("datasets", d["id"]) for d in datasets]
        wanted += [("workspaces", w["id"]) for w in body.get("targetWorkspaces", [])]
        if any(self._find(kind, item_id) is None for kind, item_id in wanted):
            return _pbi_error(404, "PowerBIEntityNotFound")
        # A V2 token grants nothing implicitly: a report can only load data if its dataset is granted by the same
        # token, so the service refuses a report whose dataset is missing from "datasets".
        granted = {d["id"].lower() for d in datasets}
        for r in reports:
            dataset_id = (self._find("reports", r["id"]) or {})["datasetId"]
            if dataset_id.lower() not in granted:
                return _pbi_error(
                    400, "InvalidRequest", f"Dataset {dataset_id} of report {r['id']} must be listed in 'datasets'"
                )
        return self._embed_token(bearer, body)

    def _ep_generate_dashboard(self, request: Request, body: Any, group: str, item: str) -> Response:
        if isinstance(bearer := self._bearer(request), Response):
            return bearer
        if (invalid := self._validated(body, _DASHBOARD_SCHEMA)) is not None:
            return invalid
        if self._find("dashboards", item, group) is None:
            return _pbi_error(404, "PowerBIEntityNotFound")
        return self._embed_token(bearer, body)

    def _embed_token(self, bearer: IssuedAccessToken, body: dict[str, Any]) -> Response:
        # An embed token never outlives the Entra token that requested it.
        minutes = body.get("lifetimeInMinutes", self.embed_token_default_minutes)
        expires_at = min(self.clock() + minutes * 60, bearer.expires_at)
        token, token_id, expiration = "H4sI" + secrets.token_urlsafe(40), str(uuid.uuid4()), _iso(expires_at)
        self.embed_tokens[token] = IssuedEmbedToken(
            token_id, expires_at, expiration, copy.deepcopy(body), bearer.principal
        )
        return _json(
            200,
            {"@odata.context": _GENERATE_TOKEN_CONTEXT, "token": token, "tokenId": token_id, "expiration": expiration},
        )


def main(argv: list[str] | None = None) -> None:
    """Run the fake standalone until interrupted."""
    parser = argparse.ArgumentParser(description="Fake Microsoft Entra ID + Power BI REST API over HTTPS")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--catalog", type=Path, help="catalogue JSON, shaped like DEFAULT_CATALOG")
    parser.add_argument("--ca-pem", type=Path, default=Path("fake-upstream-ca.pem"), help="where to write the CA")
    args = parser.parse_args(argv)
    catalog = json.loads(args.catalog.read_text(encoding="utf-8")) if args.catalog else None
    with FakeUpstream(port=args.port, catalog=catalog, log_requests=True) as fake:
        fake.write_ca_pem(args.ca_pem)
        print(
            f"Fake Entra ID + Power BI at {fake.base_url} (tenant {fake.tenant_guid}); "
            f"trust {args.ca_pem.resolve()}. Ctrl-C to stop.",
            flush=True,
        )
        try:
            threading.Event().wait()
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
