"""A local emulator of Microsoft Entra ID and the Power BI REST API, for tests and for running without a tenant.

``FakeUpstream`` is a real HTTPS server on loopback (with its own CA) that speaks Microsoft's documented wire
formats, so tests drive it with the *real* ``msal`` and ``requests`` instead of mocks; beside it, a plain-HTTP
server plays App Service's managed identity endpoint.  What each side fakes: :mod:`emulator.entra` (discovery,
user realm, the token endpoint with secrets and certificates, AADSTS errors, managed identity) and
:mod:`emulator.powerbi` (groups, reports, dashboards, tiles, datasets, users, every GenerateToken, and the
service's rules) and :mod:`emulator.provisioning` (service principal profiles, Create and Delete Group,
AssignToCapacity, imports).  The catalogue is :mod:`emulator.catalog` (``catalog.json``).

In tests::

    with FakeUpstream() as fake:                     # or the ``upstream`` / ``fake`` fixtures
        fake.write_ca_pem(path)                      # then point REQUESTS_CA_BUNDLE and SSL_CERT_FILE at it
        fake.base_url                                # authority host and Power BI API URL alike
        monkeypatch.setenv("IDENTITY_ENDPOINT", fake.managed_identity_endpoint)   # managed identity, as
        monkeypatch.setenv("IDENTITY_HEADER", fake.identity_header)               # App Service sets them

Every request is recorded (``requests``, ``calls()``, ``token_calls``, ``identity_calls``) and every token
issued (``access_tokens``, ``embed_tokens`` with their effective identities).  Scripted trouble: ``fault()``
(any status, headers such as an HTTP-date ``Retry-After``, a JSON body or, as a ``str``, an HTML page; see
``emulator.entra.entra_unavailable`` and ``entra_html_page`` for Entra's),
``throttle()``, ``latency`` (all Power BI answers), ``latency_for(path, seconds)``, ``fail_sign_in`` (a queue of
AADSTS codes), ``sign_in_failures`` (user or client id -> AADSTS code, lasting), ``next_lifetimes`` /
``token_lifetimes``, ``known_tenants`` (others get AADSTS90002), ``service_principals_allowed``,
``trial_tokens_left``, ``set_member()``, ``reject_token()`` (revoked, or expired early). Simulated time:
``clock`` (what "now" is for tokens issued and checked) and ``wait_with`` (how latency is spent: a fake clock's
``sleep`` moves that clock instead of waiting). Multitenancy: ``profiles``, ``add_profile()``,
``strict_profiles``, ``capacities``, ``imports``, ``import_publishing_polls``, ``import_outcome``.
``reset()`` clears records and scripted trouble and restores the
catalogue and tenant settings.

Standalone::

    python -m emulator.server [--port 8443] [--catalog catalog.json] [--config config.json]
                              [--ca-pem fake-upstream-ca.pem] [--managed-identity-port 0]

prints the base URL, the CA file to trust, the tenant, the default identities and the managed identity
endpoint, and runs until Ctrl-C or SIGTERM.  ``--config`` is JSON with any of: ``tenant_id``, ``users``
{name: password}, ``clients`` {id: secret}, ``public_clients`` [id], ``client_certificates`` {id: [PEM text or
file]}, ``access_token_lifetime``, ``token_lifetimes`` {user or client id: seconds},
``embed_token_default_minutes``, ``sign_in_failures`` {user or client id: AADSTS code}, ``known_tenants``,
``allow_public_client_flows``, ``latency``, ``path_latency`` {path part: seconds}, ``service_principals_allowed``,
``trial_tokens_left``, ``system_assigned_identity``, ``user_assigned_identities``, ``identity_header``,
``identity_principals`` {identity client id: object id}, ``federated_credentials`` {app client id: [{``issuer``,
``subject``, ``audiences``, ``name``}]} (see :mod:`emulator.federated`),
``strict_profiles``.
"""

from __future__ import annotations

import argparse
import copy
import json
import secrets
import signal
import ssl
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from functools import partial
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Self

import trustme
from werkzeug.exceptions import HTTPException
from werkzeug.routing import Map as Routes
from werkzeug.routing import Rule
from werkzeug.serving import BaseWSGIServer, WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from emulator import catalog as cat
from emulator import entra, powerbi, provisioning
from emulator.catalog import (
    CAPACITY_ID,
    CLIENT_ID,
    CLIENT_SECRET,
    MANAGED_IDENTITY_CLIENT_ID,
    PASSWORD,
    PUBLIC_CLIENT_ID,
    TENANT_ID,
    USER_ASSIGNED_CLIENT_ID,
    USERNAME,
)
from emulator.entra import ClientCertificate, IssuedAccessToken, make_client_certificate
from emulator.federated import FederatedCredential, SigningKey, credential_from_json, issuer, principal_id
from emulator.powerbi import IssuedEmbedToken
from emulator.wire import Map, Req, json_response, pbi_error, schema_error

if TYPE_CHECKING:
    from _typeshed.wsgi import StartResponse, WSGIEnvironment


@dataclass(frozen=True)
class Recorded:
    """One request as the fake received it."""

    method: str
    path: str
    query: dict[str, str]
    headers: dict[str, str]  # names lower-cased
    form: dict[str, str]  # urlencoded bodies only
    json: Any  # parsed JSON body, or None


@dataclass
class _Fault:
    method: str
    path_contains: str
    status: int
    headers: dict[str, str]
    body: Any
    times: int
    hang: float


_PBI = "/v1.0/myorg"
_GROUP = f"{_PBI}/groups/<group>"
_ROUTES = Routes(
    [
        Rule("/<tenant>/v2.0/.well-known/openid-configuration", endpoint=entra.openid, methods=["GET"]),
        Rule("/common/userrealm/<path:username>", endpoint=entra.userrealm, methods=["GET"]),
        Rule("/<tenant>/oauth2/v2.0/token", endpoint=entra.token, methods=["POST"]),
        Rule(f"{_PBI}/groups", endpoint=powerbi.groups, methods=["GET"]),
        Rule(f"{_PBI}/groups", endpoint=provisioning.create_group, methods=["POST"]),
        Rule(_GROUP, endpoint=provisioning.delete_group, methods=["DELETE"]),
        Rule(f"{_GROUP}/AssignToCapacity", endpoint=provisioning.assign_to_capacity, methods=["POST"]),
        Rule(f"{_GROUP}/imports", endpoint=provisioning.post_import, methods=["POST"]),
        Rule(f"{_GROUP}/imports/<import_id>", endpoint=provisioning.get_import, methods=["GET"]),
        Rule(f"{_PBI}/profiles", endpoint=provisioning.list_profiles, methods=["GET"]),
        Rule(f"{_PBI}/profiles", endpoint=provisioning.create_profile, methods=["POST"]),
        Rule(f"{_PBI}/profiles/<profile>", endpoint=provisioning.delete_profile, methods=["DELETE"]),
        Rule(f"{_GROUP}/users", endpoint=powerbi.group_users, methods=["GET"]),
        Rule(f"{_GROUP}/<any(reports,dashboards,datasets):kind>", endpoint=powerbi.group_items, methods=["GET"]),
        Rule(f"{_GROUP}/<any(reports,dashboards,datasets):kind>/<item>", endpoint=powerbi.group_item, methods=["GET"]),
        Rule(f"{_GROUP}/reports/<item>/datasources", endpoint=powerbi.datasources, methods=["GET"]),
        Rule(f"{_PBI}/datasets/<item>", endpoint=powerbi.dataset_by_id, methods=["GET"]),
        Rule(f"{_GROUP}/dashboards/<item>/tiles", endpoint=powerbi.tiles, methods=["GET"]),
        Rule(f"{_GROUP}/dashboards/<item>/tiles/<tile>", endpoint=powerbi.tiles, methods=["GET"]),
        Rule(f"{_PBI}/GenerateToken", endpoint=powerbi.generate_v2, methods=["POST"]),
        Rule(
            f"{_GROUP}/<any(reports,dashboards):kind>/<item>/GenerateToken",
            endpoint=powerbi.generate_in_group,
            methods=["POST"],
        ),
        Rule(
            f"{_GROUP}/reports/GenerateToken",
            endpoint=powerbi.generate_in_group,
            defaults={"kind": "create"},
            methods=["POST"],
        ),
        Rule(
            f"{_GROUP}/dashboards/<item>/tiles/<tile>/GenerateToken",
            endpoint=powerbi.generate_in_group,
            defaults={"kind": "tiles"},
            methods=["POST"],
        ),
    ],
    redirect_defaults=False,
)
_MI_PATH = "/msi/token"
_MI_ROUTES = Routes([Rule(_MI_PATH, endpoint=entra.managed_identity, methods=["GET"])])

# --config: the keys a file may set (see the module docstring) and their JSON types.
_CONFIG_SCHEMA = {
    "tenant_id": str,
    "users": Map(str),
    "clients": Map(str),
    "public_clients": [str],
    "client_certificates": Map([str]),
    "access_token_lifetime": int,
    "token_lifetimes": Map(int),
    "embed_token_default_minutes": int,
    "sign_in_failures": Map(int),
    "known_tenants": [str],
    "allow_public_client_flows": bool,
    "latency": float,
    "path_latency": Map(float),
    "service_principals_allowed": bool,
    "trial_tokens_left": int,
    "system_assigned_identity": str,
    "user_assigned_identities": [str],
    "identity_header": str,
    "strict_profiles": bool,
    "identity_principals": Map(str),
    "federated_credentials": Map([{"issuer": Req(str), "subject": Req(str), "audiences": [str], "name": str}]),
}
_CONFIG_ATTRIBUTES = {"tenant_id": "tenant_guid"}
# What reset() restores to its configured state: the catalogue and every setting a config file may set
# (latency is scripted trouble: clear_faults() zeroes it).
_RESTORED = [
    "catalog",
    "profiles",
    "imports",
    "capacities",
    "import_publishing_polls",
    "import_outcome",
    *{_CONFIG_ATTRIBUTES.get(k, k) for k in _CONFIG_SCHEMA} - {"public_clients", "latency", "path_latency"},
]


class _QuietRequestHandler(WSGIRequestHandler):
    """Skips werkzeug's per-request access log (errors are still logged); the fake records requests itself."""

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        pass


class FakeUpstream:
    """Fake Entra ID + Power BI REST over HTTPS on 127.0.0.1, and App Service's managed identity endpoint over
    HTTP on 127.0.0.1 (see the module docstring).

    Public attributes may be changed by tests at any time; one lock serialises access to shared state so the
    threaded servers stay consistent.
    """

    def __init__(
        self,
        *,
        port: int = 0,
        ca: trustme.CA | None = None,
        catalog: dict[str, Any] | None = None,
        clock: Callable[[], float] = time.time,
        log_requests: bool = False,
        managed_identity_port: int = 0,
    ) -> None:
        self.ca = ca or trustme.CA()
        self.port = port  # 0 = ephemeral; the real port once started
        self.managed_identity_port = managed_identity_port
        self.clock = clock
        self.catalog: dict[str, Any] = cat.fresh(catalog)
        # Entra ID: the directory, its apps and how it signs in.
        self.tenant_guid = TENANT_ID
        self.known_tenants: set[str] = set()  # when set, other tenants get AADSTS90002 (the GUID is always known)
        self.clients: dict[str, str | None] = {CLIENT_ID: CLIENT_SECRET, PUBLIC_CLIENT_ID: None}  # None = public
        self.client_certificates: dict[str, list[str]] = {}  # client id -> PEM certificates it may sign with
        self.users: dict[str, str] = {USERNAME: PASSWORD}
        self.allow_public_client_flows = False  # lets a confidential client omit its secret in user flows
        self.access_token_lifetime = 3600
        self.token_lifetimes: dict[str, int] = {}  # user or client id -> seconds
        self.next_lifetimes: list[int] = []  # queue: overrides the lifetime of the next tokens issued
        self.fail_sign_in: list[int] = []  # queue of AADSTS codes for the next token requests
        self.sign_in_failures: dict[str, int] = {}  # user or client id -> AADSTS code, for every sign-in
        self.system_assigned_identity: str | None = MANAGED_IDENTITY_CLIENT_ID  # None: the app has none
        self.user_assigned_identities: set[str] = {USER_ASSIGNED_CLIENT_ID}
        self.identity_header = secrets.token_urlsafe(24)  # what App Service puts in IDENTITY_HEADER
        self.identity_principals: dict[str, str] = {}  # identity client id -> object id (else derived)
        # App client id -> the federated identity credentials of its registration (emulator.federated).
        self.federated_credentials: dict[str, list[FederatedCredential]] = {}
        self.identity_signing_key = SigningKey()  # signs the managed identity's token-exchange JWTs
        # Power BI: tenant settings and capacity.
        self.service_principals_allowed = True  # the tenant setting "Service principals can use Fabric APIs"
        self.trial_tokens_left: int | None = None  # embed tokens left on shared capacity; None = no limit
        self.embed_token_default_minutes = 60
        # Multitenancy (emulator.provisioning): service principal profiles (id -> {"id", "displayName", "owner"}),
        # the capacities workspaces may be assigned to, and imports with how they end.
        self.profiles: dict[str, dict[str, str]] = {}
        self.capacities: set[str] = {CAPACITY_ID}
        self.imports: dict[str, dict[str, Any]] = {}
        self.import_publishing_polls = 1  # reads of an import that answer "Publishing" before its outcome
        self.import_outcome = "Succeeded"  # or "Failed"
        # A profile header naming a profile the emulator does not know (never created here, nor registered with
        # add_profile) is refused as Power BI refuses it (401) when True; when False it acts with the calling
        # app's own memberships, for tests that name profile ids without registering them.
        self.strict_profiles = True
        self.latency = 0.0  # seconds added to every Power BI answer
        self.path_latency: dict[str, float] = {}  # path part -> seconds added to matching answers
        # How latency is spent: None waits in real time; a fake clock's sleep moves that clock instead.
        self.wait_with: Callable[[float], None] | None = None
        # Entra access token -> the 401 code Power BI answers it with although it is valid by time:
        # "TokenExpired" (expired early) or anything else (revoked: PowerBINotAuthorizedException).
        self.rejected_tokens: dict[str, str] = {}
        # Records.
        self.requests: list[Recorded] = []
        self.issued_request_ids: list[str] = []
        self.access_tokens: dict[str, IssuedAccessToken] = {}
        self.refresh_tokens: dict[str, tuple[str, str]] = {}  # token -> (username, client_id)
        self.embed_tokens: dict[str, IssuedEmbedToken] = {}
        self._faults: list[_Fault] = []
        self._lock = threading.RLock()
        self._recorded = threading.Condition(self._lock)  # notified at each recorded request
        self._log_requests = log_requests
        self._stopping = threading.Event()  # wakes hanging handlers on stop(), so stop() never blocks
        self._servers: list[tuple[BaseWSGIServer, threading.Thread]] = []
        self._restored: dict[str, Any] = {}
        self._snapshot()

    @classmethod
    def from_catalog_file(cls, path: str | Path, **kwargs: Any) -> Self:
        """A fake whose catalogue is read from a JSON file shaped like DEFAULT_CATALOG."""
        return cls(catalog=cat.load(path), **kwargs)

    def configure(self, config: dict[str, Any], base: Path | None = None) -> Self:
        """Apply a ``--config`` mapping (see the module docstring); maps add to the defaults, other values
        replace them.  ``base`` is where relative certificate files are found."""
        if (error := schema_error(config, _CONFIG_SCHEMA, "config")) is not None:
            raise ValueError(f"Invalid emulator configuration: {error}")
        for key, value in config.items():
            if key == "public_clients":
                self.clients.update(dict.fromkeys(value))
            elif key == "federated_credentials":
                for client, credentials in value.items():
                    self.federated_credentials.setdefault(client, []).extend(map(credential_from_json, credentials))
            elif key == "client_certificates":
                for client, pems in value.items():
                    texts = [p if "-----BEGIN" in p else ((base or Path()) / p).read_text() for p in pems]
                    self.client_certificates.setdefault(client, []).extend(texts)
            elif isinstance(value, dict):
                getattr(self, key).update(value)
            else:
                setattr(self, _CONFIG_ATTRIBUTES.get(key, key), set(value) if isinstance(value, list) else value)
        self._snapshot()
        return self

    def _snapshot(self) -> None:
        self._restored = {name: copy.deepcopy(getattr(self, name)) for name in _RESTORED}

    # -- lifecycle -----------------------------------------------------------------------------------------

    def start(self) -> Self:
        if self._servers:
            return self
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self.ca.issue_cert("localhost", "127.0.0.1").configure_cert(ctx)
        self._stopping.clear()
        self.port = self._serve(self.port, _ROUTES, ctx)
        self.managed_identity_port = self._serve(self.managed_identity_port, _MI_ROUTES, None)
        return self

    def _serve(self, port: int, routes: Routes, ctx: ssl.SSLContext | None) -> int:
        handler = None if self._log_requests else _QuietRequestHandler
        app = partial(self._wsgi, routes=routes)
        server = make_server("127.0.0.1", port, app, threaded=True, ssl_context=ctx, request_handler=handler)
        # A short poll interval: shutdown() waits up to one interval, and tests stop servers often.
        serve = partial(server.serve_forever, poll_interval=0.05)
        thread = threading.Thread(target=serve, name=f"FakeUpstream:{server.server_port}", daemon=True)
        thread.start()
        self._servers.append((server, thread))
        return server.server_port

    def stop(self) -> None:
        self._stopping.set()
        for server, thread in self._servers:
            server.shutdown()
            server.server_close()
            thread.join(timeout=5)
        self._servers = []

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def base_url(self) -> str:
        # "localhost", not 127.0.0.1: MSAL derives the userrealm URL from the authority's hostname.
        return f"https://localhost:{self.port}"

    @property
    def managed_identity_endpoint(self) -> str:
        """IDENTITY_ENDPOINT, as App Service sets it (plain HTTP on loopback)."""
        return f"http://127.0.0.1:{self.managed_identity_port}{_MI_PATH}"

    def managed_identity_env(self) -> dict[str, str]:
        """The two variables App Service sets, with which MSAL's ManagedIdentityClient finds this endpoint."""
        return {"IDENTITY_ENDPOINT": self.managed_identity_endpoint, "IDENTITY_HEADER": self.identity_header}

    @property
    def ca_pem(self) -> bytes:
        return self.ca.cert_pem.bytes()

    def write_ca_pem(self, path: str | Path) -> Path:
        """Write the CA certificate (PEM), e.g. for REQUESTS_CA_BUNDLE / SSL_CERT_FILE."""
        self.ca.cert_pem.write_to_path(str(path))
        return Path(path)

    # -- identities and catalogue --------------------------------------------------------------------------

    def add_client_certificate(self, client_id: str, *, register: bool = True) -> ClientCertificate:
        """A new certificate for the app ``client_id``, registered on it unless ``register`` is False."""
        certificate = make_client_certificate(f"app-{client_id}")
        if register:
            with self._lock:
                self.client_certificates.setdefault(client_id, []).append(certificate.cert_pem)
        return certificate

    def add_profile(
        self,
        display_name: str,
        owner: str = CLIENT_ID,
        *,
        profile_id: str | None = None,
        workspaces: Iterable[str] = (),
        role: str = "Admin",
    ) -> str:
        """A service principal profile of the app ``owner`` (a client id), as Create Profile makes one (with
        ``profile_id`` if given), made ``role`` in each of ``workspaces``; its id."""
        profile_id = (profile_id or str(uuid.uuid4())).lower()
        with self._lock:
            self.profiles[profile_id] = {"id": profile_id, "displayName": display_name, "owner": owner}
            for workspace_id in workspaces:
                cat.set_member(self.catalog, workspace_id, profile_id, role)
        return profile_id

    def trust_managed_identity(
        self, client_id: str, identity_client_id: str, audience: str = "api://AzureADTokenExchange"
    ) -> FederatedCredential:
        """Add to the app ``client_id`` a federated credential that trusts the user-assigned identity
        ``identity_client_id`` (its object id as the subject, Entra's issuer for this tenant), as
        ``az ad app federated-credential create`` does; the credential is returned."""
        credential = FederatedCredential(issuer(self), self.principal_id(identity_client_id), (audience,))
        with self._lock:
            self.federated_credentials.setdefault(client_id, []).append(credential)
        return credential

    def principal_id(self, identity_client_id: str) -> str:
        """The object (principal) id of the managed identity with this client id."""
        return principal_id(self, identity_client_id)

    def set_member(self, workspace_id: str, principal: str, role: str | None) -> None:
        """Make ``principal`` (a user's name, or an app's client id) ``role`` in the workspace; None removes it."""
        with self._lock:
            cat.set_member(self.catalog, workspace_id, principal, role)

    # -- recording and fault injection ---------------------------------------------------------------------

    def calls(self, method: str | None = None, path_contains: str | None = None) -> list[Recorded]:
        with self._lock:
            return [
                r
                for r in self.requests
                if (method is None or r.method == method.upper()) and (path_contains is None or path_contains in r.path)
            ]

    def wait_for_calls(
        self, count: int, method: str | None = None, path_contains: str | None = None, timeout: float = 30.0
    ) -> list[Recorded]:
        """The matching calls once there are at least ``count`` (woken by each recorded request, no polling),
        or what there is after ``timeout`` seconds: for calls made by another process or a background thread."""
        with self._recorded:
            self._recorded.wait_for(lambda: len(self.calls(method, path_contains)) >= count, timeout)
            return self.calls(method, path_contains)

    @property
    def token_calls(self) -> list[Recorded]:
        return self.calls("POST", "/oauth2/v2.0/token")

    @property
    def identity_calls(self) -> list[Recorded]:
        return self.calls("GET", _MI_PATH)

    def reset_records(self) -> None:
        with self._lock:
            self.requests.clear()
            self.issued_request_ids.clear()

    def clear_faults(self) -> None:
        """Drop scripted behaviour: faults, fail_sign_in, next_lifetimes, latency and rejected tokens."""
        with self._lock:
            self._faults.clear()
            self.fail_sign_in.clear()
            self.next_lifetimes.clear()
            self.latency = 0.0
            self.path_latency.clear()
            self.wait_with = None
            self.rejected_tokens.clear()

    def reset(self) -> None:
        """Clear records and scripted behaviour, and restore the catalogue, identities and settings as
        constructed or configured; issued tokens stay valid."""
        self.reset_records()
        self.clear_faults()
        with self._lock:
            for name, value in self._restored.items():
                setattr(self, name, copy.deepcopy(value))

    def reject_token(self, access_token: str, code: str = "revoked") -> None:
        """Make Power BI refuse ``access_token`` from now on although it has not expired: 401 ``TokenExpired``
        with ``code="TokenExpired"``, else 401 PowerBINotAuthorizedException (a revoked token)."""
        with self._lock:
            self.rejected_tokens[access_token] = code

    def latency_for(self, path_contains: str, seconds: float) -> None:
        """Add ``seconds`` to every answer whose path contains ``path_contains`` (0 removes it)."""
        with self._lock:
            self.path_latency[path_contains] = seconds

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
        ``status``/``headers``/``body`` (a default error body if None; a ``str`` is sent as an HTML page), after
        ``hang`` seconds."""
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

    def _wsgi(self, environ: WSGIEnvironment, start_response: StartResponse, routes: Routes) -> Iterable[bytes]:
        request = Request(environ)
        is_form = request.mimetype == "application/x-www-form-urlencoded"
        form = request.form.to_dict() if is_form else {}
        try:
            body = None if is_form or not request.get_data() else json.loads(request.get_data())
        except ValueError:
            body = None
        path = request.path
        with self._lock:
            headers = {k.lower(): v for k, v in request.headers.items()}
            self.requests.append(Recorded(request.method, path, request.args.to_dict(), headers, form, body))
            self._recorded.notify_all()
            extra = sum(seconds for part, seconds in self.path_latency.items() if part in path)
        is_pbi = path.startswith("/v1.0/")
        fault = self._take_fault(request.method, path)
        delay = (fault.hang if fault else 0.0) + (self.latency if is_pbi else 0.0) + extra
        if delay > 0 and self.wait_with is not None:
            self.wait_with(delay)
        elif delay > 0:
            self._stopping.wait(delay)  # not time.sleep: stop() must cut it short
        if fault is None:
            response = self._dispatch(request, body, routes)
        else:
            fault_body = self._default_fault_body(fault.status, is_pbi) if fault.body is None else fault.body
            if isinstance(fault_body, str):  # a page, not an API answer: a proxy's or an outage page
                response = Response(fault_body, status=fault.status, headers=fault.headers, mimetype="text/html")
            else:
                response = json_response(fault.status, fault_body, fault.headers)
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

    def _dispatch(self, request: Request, body: Any, routes: Routes) -> Response:
        try:
            handler, args = routes.bind_to_environ(request.environ).match()
        except HTTPException as exc:
            return pbi_error(exc.code or 404, type(exc).__name__, exc.description)
        with self._lock:
            answer: Response = handler(self, request, body, **args)
            return answer


def _banner(fake: FakeUpstream, ca_pem: Path) -> str:
    """What a person needs to point the function (or anything else) at the emulator."""
    workspaces = ", ".join(f"{ws['name']} {ws['id']}" for ws in fake.catalog["workspaces"])
    secret = fake.clients.get(CLIENT_ID) or "(none)"
    return "\n".join(
        [
            f"Fake Entra ID + Power BI at {fake.base_url} (authority host and Power BI API URL alike)",
            f"  trust this CA:      {ca_pem.resolve()}  (REQUESTS_CA_BUNDLE, SSL_CERT_FILE)",
            f"  tenant id:          {fake.tenant_guid}",
            f"  service principal:  client id {CLIENT_ID}, secret {secret}",
            f"  master user:        {USERNAME} / {fake.users.get(USERNAME, '(removed)')} (public client "
            f"{PUBLIC_CLIENT_ID}, or the client above)",
            f"  managed identity:   IDENTITY_ENDPOINT={fake.managed_identity_endpoint} "
            f"IDENTITY_HEADER={fake.identity_header} (system-assigned {fake.system_assigned_identity or 'none'}; "
            f"user-assigned {', '.join(sorted(fake.user_assigned_identities)) or 'none'})",
            f"  workspaces:         {workspaces}",
            "Ctrl-C or SIGTERM stops it.",
        ]
    )


def main(argv: list[str] | None = None) -> None:
    """Run the emulator standalone until Ctrl-C or SIGTERM."""
    parser = argparse.ArgumentParser(
        prog="python -m emulator.server",
        description="Local emulator of Microsoft Entra ID and the Power BI REST API (HTTPS on 127.0.0.1), with "
        "App Service's managed identity endpoint (HTTP on 127.0.0.1).",
    )
    parser.add_argument("--port", type=int, default=8443, help="HTTPS port (0: any free port)")
    parser.add_argument("--catalog", type=Path, help="catalogue JSON, shaped like emulator/catalog.json")
    parser.add_argument("--config", type=Path, help="identities and behaviour JSON (see the module docstring)")
    parser.add_argument("--ca-pem", type=Path, default=Path("fake-upstream-ca.pem"), help="where to write the CA")
    parser.add_argument("--managed-identity-port", type=int, default=0, help="managed identity HTTP port")
    args = parser.parse_args(argv)
    try:
        catalog = cat.load(args.catalog) if args.catalog else None
        fake = FakeUpstream(
            port=args.port, catalog=catalog, log_requests=True, managed_identity_port=args.managed_identity_port
        )
        if args.config:
            fake.configure(json.loads(args.config.read_text(encoding="utf-8")), base=args.config.parent)
    except (OSError, ValueError) as exc:
        parser.error(str(exc))
    stop = threading.Event()
    # Both signals, explicitly: a shell that starts us in the background may have left SIGINT ignored.
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    with fake:
        fake.write_ca_pem(args.ca_pem)
        print(_banner(fake, args.ca_pem), flush=True)
        stop.wait()


if __name__ == "__main__":
    main()
