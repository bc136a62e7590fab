"""The fake's Microsoft Entra ID: OpenID discovery, user realm, the v2 token endpoint, and App Service's managed
identity endpoint.

Token endpoint (``POST /{tenant}/oauth2/v2.0/token``): the ``password``, ``client_credentials`` and
``refresh_token`` grants; a client authenticates with a secret (``client_secret`` or HTTP Basic) or with a
certificate (``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and a
``client_assertion`` JWT signed RS256 or PS256 by a certificate registered in ``client_certificates``, named
by its ``x5t`` / ``x5t#S256`` header; ``aud`` must be this token endpoint, ``iss`` = ``sub`` = the client
id, ``exp`` in the future).  Failures answer Entra's ``AADSTS`` JSON (see ``_AADSTS``).

Federated credentials (:mod:`emulator.federated`): a client assertion without a certificate thumbprint is
checked as a managed identity's token against the app's ``federated_credentials`` (AADSTS700211, 700213,
70021 when none matches), and the managed identity endpoint answers a signed JWT for a token-exchange audience.

Managed identity (App Service protocol, which MSAL's ``ManagedIdentityClient`` uses when IDENTITY_ENDPOINT
and IDENTITY_HEADER are set): ``GET {endpoint}?resource=...&api-version=2019-08-01[&client_id=...]`` with
``X-IDENTITY-HEADER``, served over plain HTTP on 127.0.0.1 as App Service does.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
import uuid
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit, urlunsplit

import requests
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID
from requests.adapters import HTTPAdapter
from werkzeug.wrappers import Request, Response

from emulator import federated
from emulator.catalog import POWERBI_RESOURCE, same
from emulator.wire import b64url, b64url_decode, json_response
from shared.http import new_session

if TYPE_CHECKING:
    from emulator.server import FakeUpstream

JWT_BEARER = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
_PBI_RESOURCE_APP_ID = "00000009-0000-0000-c000-000000000000"  # the Power BI Service app, named in MFA errors
_OIDC_SCOPES = {"openid", "profile", "offline_access", "email"}  # Entra leaves these out of "scope" in answers
_MI_API_VERSION = "2019-08-01"
_KEYS_HINT = (
    "Please visit the Azure Portal, Graph Explorer or directly use MS Graph to see configured keys for app Id "
    "'{client}'."
)

# AADSTS code -> (OAuth error, Microsoft's message); placeholders are filled from the request.
_MFA = "Due to a configuration change made by your administrator, or because you moved to a new location, you must"
_AADSTS: dict[int, tuple[str, str]] = {
    50013: (
        "invalid_client",
        "Assertion audience claim does not match the required value. The audience in the assertion was "
        "'{aud}' and the expected audience is '{expected}'.",
    ),
    50027: ("invalid_request", "Invalid JWT token. {reason}"),
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
    700021: ("invalid_client", "Client assertion application identifier doesn't match 'client_id' parameter."),
    700024: (
        "invalid_client",
        "Client assertion is not within its valid time range. Current time: {now}, expiry time of assertion {exp}.",
    ),
    700025: (
        "invalid_client",
        "Client is public so neither 'client_assertion' nor 'client_secret' should be presented.",
    ),
    700027: (
        "invalid_client",
        "Client assertion contains an invalid signature. [Reason - {reason}, Thumbprint of key used by client: "
        f"'{{thumbprint}}', {_KEYS_HINT}]",
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
    **federated.MESSAGES,
}


@dataclass(frozen=True)
class IssuedAccessToken:
    principal: str  # username; the client id for client_credentials and managed identities
    client_id: str
    expires_at: float  # epoch seconds
    scope: str
    principal_type: str = "User"  # "App" for a service principal or managed identity, as Power BI calls it


@dataclass(frozen=True)
class ClientCertificate:
    """An app's certificate and its private key, PEM; ``pem`` is both, as a PEM file for a client holds them."""

    cert_pem: str
    key_pem: str
    sha1_thumbprint: str  # hex, as the Azure portal shows it
    sha256_thumbprint: str

    @property
    def pem(self) -> str:
        return self.key_pem + self.cert_pem


def make_client_certificate(common_name: str = "powerbi-embed") -> ClientCertificate:
    """A new self-signed RSA certificate, like ``New-SelfSignedCertificate`` makes for an app registration."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    pkcs8, no_password = serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    key_pem = key.private_bytes(serialization.Encoding.PEM, pkcs8, no_password)
    return ClientCertificate(
        cert.public_bytes(serialization.Encoding.PEM).decode(),
        key_pem.decode(),
        cert.fingerprint(hashes.SHA1()).hex().upper(),  # noqa: S303 - x5t is SHA-1 by definition (RFC 7515)
        cert.fingerprint(hashes.SHA256()).hex().upper(),
    )


def entra_error(fake: FakeUpstream, request: Request, code: int, error: str | None = None, **context: str) -> Response:
    """Entra's error JSON; 401 for invalid_client, else 400. A ``message`` in ``context`` replaces the code's
    usual one (Entra words some codes differently by cause)."""
    default_error, template = _AADSTS.get(code, ("invalid_request", "Injected sign-in failure."))
    template = context.pop("message", "") or template
    error = error or default_error
    stamp = dt.datetime.fromtimestamp(fake.clock(), dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    trace = str(uuid.uuid4())
    # Entra echoes the caller's client-request-id as the correlation id.
    correlation = request.headers.get("client-request-id") or str(uuid.uuid4())
    description = (
        f"AADSTS{code}: {template.format_map(defaultdict(str, context))}\r\n"
        f"Trace ID: {trace}\r\nCorrelation ID: {correlation}\r\nTimestamp: {stamp}"
    )
    return json_response(
        401 if error == "invalid_client" else 400,
        {
            "error": error,
            "error_description": description,
            "error_codes": [code],
            "timestamp": stamp,
            "trace_id": trace,
            "correlation_id": correlation,
            "error_uri": f"{fake.base_url}/error?code={code}",
        },
    )


def _unknown_tenant(fake: FakeUpstream, tenant: str) -> bool:
    known = fake.known_tenants | {fake.tenant_guid, "common", "organizations"}
    return bool(fake.known_tenants) and not any(same(tenant, t) for t in known)


def openid(fake: FakeUpstream, request: Request, body: Any, tenant: str) -> Response:
    if _unknown_tenant(fake, tenant):
        return entra_error(fake, request, 90002, error="invalid_tenant", tenant=tenant)
    base = f"{fake.base_url}/{tenant}"  # MSAL requires the issuer's host to be the authority's host
    return json_response(
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
            "token_endpoint_auth_methods_supported": ["client_secret_post", "private_key_jwt", "client_secret_basic"],
            "tenant_region_scope": None,
            "cloud_instance_name": "microsoftonline.com",
        },
    )


def userrealm(fake: FakeUpstream, request: Request, body: Any, username: str) -> Response:
    # Entra answers "Managed" even for users it does not know.
    return json_response(
        200,
        {
            "ver": "1.0",
            "account_type": "Managed",
            "domain_name": username.rpartition("@")[2],
            "cloud_instance_name": "microsoftonline.com",
            "cloud_audience_urn": "urn:federation:MicrosoftOnline",
        },
    )


_REQUIRED = {
    "password": ("username", "password", "scope"),
    "client_credentials": ("scope",),
    "refresh_token": ("refresh_token",),
}


def token(fake: FakeUpstream, request: Request, body: Any, tenant: str) -> Response:
    form = request.form
    grant = form.get("grant_type", "")
    client_id, secret = form.get("client_id", ""), form.get("client_secret")
    if request.authorization and request.authorization.type == "basic":  # client_secret_basic
        client_id, secret = request.authorization.username or client_id, request.authorization.password
    ctx = {"tenant": tenant, "client": client_id, "grant": grant}

    def fail(code: int, **more: str) -> Response:
        return entra_error(fake, request, code, **ctx, **more)

    if fake.fail_sign_in:
        return fail(fake.fail_sign_in.pop(0))
    if _unknown_tenant(fake, tenant):
        return fail(90002)
    for param in ("grant_type", "client_id", *_REQUIRED.get(grant, ())):
        if not (form.get(param) or (param == "client_id" and client_id)):
            return fail(900144, param=param)
    if grant not in _REQUIRED:
        return fail(70003)
    certificates = fake.client_certificates.get(client_id, [])
    if client_id not in fake.clients and not certificates and client_id not in fake.federated_credentials:
        return fail(700016)
    user = form.get("username", "")
    if grant == "refresh_token":
        user, rt_client = fake.refresh_tokens.get(form["refresh_token"], ("", ""))
        if rt_client != client_id or user not in fake.users:
            return fail(70000)
    lasting = [code for key in (user, client_id) for name, code in fake.sign_in_failures.items() if same(name, key)]
    if lasting:
        return fail(lasting[0], user=user)
    if (refused := _client_authentication(fake, request, ctx, secret, certificates)) is not None:
        return refused
    scopes = [s for s in form.get("scope", "").split() if s not in _OIDC_SCOPES]
    if grant == "client_credentials":
        if len(scopes) != 1 or not scopes[0].endswith("/.default"):
            return fail(1002012, scope=form["scope"])
        return json_response(200, issue(fake, client_id, client_id, scopes, user=None))
    if grant == "password":
        if user not in fake.users:
            return fail(50034, user=user)
        if fake.users[user] != form["password"]:
            return fail(50126)
    scopes = scopes or [f"{POWERBI_RESOURCE}/.default"]
    return json_response(200, issue(fake, user, client_id, scopes, user=user))


def _client_authentication(
    fake: FakeUpstream, request: Request, ctx: dict[str, str], secret: str | None, certificates: list[str]
) -> Response | None:
    """The refusal for a client that does not prove who it is (secret or certificate), or None."""
    form, client_id = request.form, ctx["client"]
    assertion = form.get("client_assertion")
    expected = fake.clients.get(client_id)
    public = expected is None and not certificates and not fake.federated_credentials.get(client_id)
    if public and (secret is not None or assertion is not None):
        return entra_error(fake, request, 700025, **ctx)
    if assertion is not None:
        if form.get("client_assertion_type") != JWT_BEARER:
            return entra_error(fake, request, 900144, param="client_assertion_type", **ctx)
        failure = _assertion_failure(fake, assertion, client_id, f"{fake.base_url}{request.path}", certificates)
        return None if failure is None else entra_error(fake, request, failure[0], **ctx, **failure[1])
    user_flow = form.get("grant_type") != "client_credentials"
    if not public and secret is None and not (user_flow and fake.allow_public_client_flows):
        return entra_error(fake, request, 7000218, **ctx)
    if not public and secret is not None and secret != expected:
        return entra_error(fake, request, 7000215, **ctx)
    return None


def _assertion_failure(
    fake: FakeUpstream, assertion: str, client_id: str, endpoint: str, certificates: list[str]
) -> tuple[int, dict[str, str]] | None:
    """Check a client assertion (RFC 7523) the way Entra does; (AADSTS code, message context) or None.

    One that names a certificate by thumbprint (``x5t``) is the app's own, signed with its certificate; any
    other is a federated credential's token (a managed identity's, here)."""
    try:
        header_b64, claims_b64, signature_b64 = assertion.split(".")
        header, claims = (json.loads(b64url_decode(part)) for part in (header_b64, claims_b64))
        signature = b64url_decode(signature_b64)
        if not isinstance(header, dict) or not isinstance(claims, dict):
            raise ValueError("not a JWT")
    except ValueError:
        return 50027, {"reason": "JWT token is malformed."}
    x5t, sha256 = header.get("x5t"), header.get("x5t#S256")
    if not (x5t or sha256):
        signed = f"{header_b64}.{claims_b64}".encode()
        return federated.assertion_failure(fake, header, claims, signed, signature, client_id)
    thumbprint = b64url_decode(str(sha256 or x5t)).hex().upper()
    cert = next((c for c in map(_load_cert, certificates) if thumbprint in _thumbprints(c)), None)
    if cert is None:
        return 700027, {"reason": "The key was not found.", "thumbprint": thumbprint}
    if not _signature_ok(cert, header.get("alg"), f"{header_b64}.{claims_b64}".encode(), signature):
        reason = "The provided signature value did not match the expected signature value."
        return 700027, {"reason": reason, "thumbprint": thumbprint}
    if claims.get("iss") != client_id or claims.get("sub") != client_id:
        return 700021, {}
    if not same(str(claims.get("aud", "")), endpoint):
        return 50013, {"aud": str(claims.get("aud")), "expected": endpoint}
    now = fake.clock()
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= now or claims.get("nbf", 0) > now:
        return 700024, {"now": _stamp(now), "exp": _stamp(float(claims.get("exp") or 0))}
    return None


def _load_cert(pem: str) -> x509.Certificate:
    return x509.load_pem_x509_certificate(pem.encode())


def _thumbprints(cert: x509.Certificate) -> tuple[str, str]:
    sha1 = cert.fingerprint(hashes.SHA1())  # noqa: S303 - x5t is SHA-1 by definition (RFC 7515)
    return sha1.hex().upper(), cert.fingerprint(hashes.SHA256()).hex().upper()


def _signature_ok(cert: x509.Certificate, alg: Any, signed: bytes, signature: bytes) -> bool:
    key = cert.public_key()
    pads = {  # RFC 7518: RS256 is PKCS#1 v1.5, PS256 is PSS with MGF1 and a salt as long as the hash
        "RS256": padding.PKCS1v15(),
        "PS256": padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=hashes.SHA256.digest_size),
    }
    if alg not in pads or not isinstance(key, rsa.RSAPublicKey):
        return False
    try:
        key.verify(signature, signed, pads[alg], hashes.SHA256())
    except InvalidSignature:
        return False
    return True


def _stamp(epoch: float) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.0000000Z")


def new_access_token(fake: FakeUpstream, principal: str, client_id: str, scope: str, principal_type: str) -> str:
    """Record a new Entra access token for Power BI to accept; its lifetime is the next of ``next_lifetimes``,
    else ``token_lifetimes`` for the principal or client, else ``access_token_lifetime``."""
    lifetime = fake.next_lifetimes.pop(0) if fake.next_lifetimes else None
    for key in (principal, client_id):
        lifetime = lifetime or fake.token_lifetimes.get(key)
    value = "fake-at-" + secrets.token_urlsafe(32)
    expires_at = int(fake.clock()) + (lifetime or fake.access_token_lifetime)
    fake.access_tokens[value] = IssuedAccessToken(principal, client_id, expires_at, scope, principal_type)
    return value


def issue(fake: FakeUpstream, principal: str, client_id: str, scopes: list[str], user: str | None) -> dict[str, Any]:
    """The token endpoint's answer; for a user, with a refresh token, an (unsigned) id token and client info."""
    scope = " ".join(scopes)
    access_token = new_access_token(fake, principal, client_id, scope, "User" if user else "App")
    now, expires_at = int(fake.clock()), int(fake.access_tokens[access_token].expires_at)
    lifetime = expires_at - now
    answer: dict[str, Any] = {
        "token_type": "Bearer",
        "scope": scope,
        "expires_in": lifetime,
        "ext_expires_in": lifetime,
        "access_token": access_token,
    }
    if user is None:
        return answer
    refresh = "fake-rt-" + secrets.token_urlsafe(32)
    fake.refresh_tokens[refresh] = (user, client_id)
    oid = str(uuid.uuid5(uuid.NAMESPACE_URL, f"user:{user}"))
    claims = {
        "aud": client_id,
        "iss": f"{fake.base_url}/{fake.tenant_guid}/v2.0",
        "iat": now,
        "nbf": now,
        "exp": expires_at,
        "name": user.partition("@")[0],
        "oid": oid,
        "preferred_username": user,
        "sub": b64url(uuid.uuid5(uuid.NAMESPACE_URL, f"{user}|{client_id}").bytes),  # pairwise per app
        "tid": fake.tenant_guid,
        "ver": "2.0",
    }
    header = b64url(json.dumps({"alg": "none", "typ": "JWT"}).encode())  # unsigned: MSAL does not verify it
    answer.update(
        refresh_token=refresh,
        id_token=f"{header}.{b64url(json.dumps(claims).encode())}.",
        client_info=b64url(json.dumps({"uid": oid, "utid": fake.tenant_guid}).encode()),
    )
    return answer


def _mi_error(status: int, message: str) -> Response:
    # App Service's shape, which MSAL reads as "{statusCode}, {message}".
    return json_response(status, {"statusCode": status, "message": message, "correlationId": str(uuid.uuid4())})


def managed_identity(fake: FakeUpstream, request: Request, body: Any) -> Response:
    """App Service's identity endpoint: a token for the app's system-assigned identity, or for the
    user-assigned one named by ``client_id``."""
    if not secrets.compare_digest(request.headers.get("X-IDENTITY-HEADER", ""), fake.identity_header):
        return _mi_error(401, "The X-IDENTITY-HEADER header is missing or does not match IDENTITY_HEADER.")
    args = request.args
    if args.get("api-version") != _MI_API_VERSION:
        return _mi_error(400, f"api-version must be {_MI_API_VERSION}.")
    if not (resource := args.get("resource")):
        return _mi_error(400, "The resource parameter is required.")
    wanted = args.get("client_id")
    if wanted is None and not {"object_id", "principal_id", "mi_res_id"} & set(args):
        identity = fake.system_assigned_identity or None  # "" in a config file: no system-assigned identity
    else:
        identity = next((i for i in fake.user_assigned_identities if wanted and same(i, wanted)), None)
    if identity is None:
        return _mi_error(400, "Unable to load the proper Managed Identity.")
    if resource in federated.TOKEN_EXCHANGE_AUDIENCES:  # a JWT Entra ID itself accepts as a client assertion
        assertion, expires_at = federated.exchange_token(fake, identity, resource)
        return json_response(
            200,
            {
                "access_token": assertion,
                "expires_on": str(expires_at),
                "resource": resource,
                "token_type": "Bearer",
                "client_id": identity,
            },
        )
    access_token = new_access_token(fake, identity, identity, resource, "App")
    return json_response(
        200,
        {
            "access_token": access_token,
            "expires_on": str(int(fake.access_tokens[access_token].expires_at)),
            "resource": resource,
            "token_type": "Bearer",
            "client_id": identity,
        },
    )


# -- outages --------------------------------------------------------------------------------------------------

TOKEN_PATH = "/oauth2/v2.0/token"
DISCOVERY_PATH = "/.well-known/openid-configuration"


def entra_unavailable(
    fake: FakeUpstream,
    *,
    status: int = 503,
    retry_after: str | None = None,
    times: int = 1,
    path: str = TOKEN_PATH,
) -> None:
    """Make Entra's token endpoint (or ``path``: the discovery document, the managed identity endpoint) answer
    the next ``times`` requests with ``status`` (5xx or 429), with ``retry_after`` as given (a number, or
    something malformed such as ``soon``), with OAuth's ``temporarily_unavailable`` JSON (App Service's
    error shape for the managed identity endpoint)."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    if path == "/msi/token":
        body: Any = {"statusCode": status, "message": "The service is unavailable.", "correlationId": str(uuid.uuid4())}
    else:
        body = {
            "error": "temporarily_unavailable",
            "error_description": "The server is temporarily unavailable or is throttling requests.",
        }
    method = "POST" if path == TOKEN_PATH else "GET"
    fake.fault(method, path, status=status, headers=headers, body=body, times=times)


# What a proxy, a captive portal or an outage page sends instead of Entra's JSON.
OUTAGE_PAGE = (
    "<!DOCTYPE html><html><head><title>Service Unavailable</title></head>"
    "<body><h1>We'll be back soon</h1><p>The service is temporarily unavailable.</p></body></html>"
)


def entra_html_page(
    fake: FakeUpstream, *, status: int = 200, retry_after: str | None = None, times: int = 1, path: str = TOKEN_PATH
) -> None:
    """Make Entra's token endpoint (or ``path``) answer the next ``times`` requests with an HTML page at
    ``status`` (any: 200, 403, 404, 5xx), as a proxy or an outage page in front of it would."""
    headers = {"Retry-After": retry_after} if retry_after is not None else {}
    method = "POST" if path == TOKEN_PATH else "GET"
    fake.fault(method, path, status=status, headers=headers, body=OUTAGE_PAGE, times=times)


# -- reaching the emulator from MSAL ------------------------------------------------------------------------


class _PortRouting(HTTPAdapter):
    """Sends ``https://{host}/...`` (no port) to ``https://{host}:{port}/...``."""

    def __init__(self, port: int) -> None:
        super().__init__(pool_connections=1, pool_maxsize=32, max_retries=0)
        self.port = port

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        parts = urlsplit(request.url or "")
        if parts.port is None and parts.hostname:
            request.url = urlunsplit(parts._replace(netloc=f"{parts.hostname}:{self.port}"))
        return super().send(request, *args, **kwargs)


def emulator_session(authority_host: str, session: requests.Session | None = None) -> requests.Session:
    """A session for the function (``EmbedService.create(settings, session=...)``) that reaches an
    emulator on a port other than 443.

    MSAL builds its user-realm discovery URL (username-password sign-in) from the authority's host
    name without its port: ``https://localhost/common/userrealm/...``. Entra ID listens on 443, the
    emulator does not (tests never bind 443), so this session routes the port-less host to the
    authority's port. Production needs none of it; the tests and the local host install it.
    """
    session = session or new_session()
    parts = urlsplit(authority_host)
    if parts.hostname and parts.port not in (None, 443):
        session.mount(f"https://{parts.hostname}/", _PortRouting(parts.port))
    return session
