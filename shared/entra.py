"""Entra ID access tokens for Power BI, through one MSAL application per worker process.

- The MSAL application is built on first use (building it fetches the authority's
  OpenID configuration, a network call that must not run at import time) and then
  kept, with its token cache, for the life of the process.
- Instance discovery is off, so any https authority host works: sovereign clouds
  and the local emulator alike.
- A token is handed out only if it has the asked-for life left; otherwise it is
  dropped from MSAL's cache and a new one is fetched, because an embed token never
  outlives the Entra token that made it.
- One sign-in at a time: concurrent cold requests wait for the first one's token
  instead of each signing in.
- Entra ID down or throttling (5xx, 429, unreachable, after the HTTP client's bounded
  retries, or MSAL's replay of such an answer) is ``503 signin_unavailable`` with a
  Retry-After, never a sign-in refusal; refusals (AADSTS codes) are ``502 sign_in_failed``.
- Every secret and token it holds or is given is registered with ``shared.redact``.
"""

from __future__ import annotations

import logging
import math
import re
import sys
import threading
from dataclasses import dataclass, field
from typing import Any

import msal
import requests

from shared.assertion import AssertionRefused, ManagedIdentityAssertion
from shared.clock import Clock
from shared.errors import (
    ConfigurationError,
    EmbedError,
    SignInFailed,
    SignInUnavailable,
    UpstreamTimeout,
    UpstreamUnreachable,
    sign_in_message,
)
from shared.http import HttpClient, current_context, retry_after_seconds
from shared.redact import register_secret
from shared.settings import Settings

logger = logging.getLogger(__name__)

_AADSTS = re.compile(r"AADSTS(\d+)")
# When Entra ID is down or throttling without saying for how long: MSAL itself replays such a
# failure for 5 s before it asks again, so sooner would only get the replay.
DEFAULT_RETRY_AFTER_SECONDS = 5
# What MSAL raises, or lets through from our HTTP client, when a sign-in cannot be completed:
# MsalServiceError for a 5xx, ValueError for an unreadable answer or unusable settings,
# RuntimeError and requests' errors from OpenID discovery, and our own HttpClient failures.
# PyJWT's errors (a key it cannot sign with) are added by ``_failures``.
_MSAL_FAILURES: tuple[type[Exception], ...] = (
    msal.exceptions.MsalServiceError,
    ValueError,
    RuntimeError,
    requests.RequestException,
    UpstreamUnreachable,
    UpstreamTimeout,
)


def _jwt_errors() -> tuple[type[Exception], ...]:
    """PyJWT's base error, if PyJWT is loaded. MSAL imports it only to sign a client assertion (a
    certificate), so importing it here would cost every start (PyJWT pulls in cryptography) only to
    name an exception that cannot have been raised when it is not loaded."""
    jwt = sys.modules.get("jwt")
    error = getattr(jwt, "PyJWTError", None)
    return (error,) if isinstance(error, type) and issubclass(error, Exception) else ()


def _failures() -> tuple[type[Exception], ...]:
    return _MSAL_FAILURES + _jwt_errors()


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # seconds since the epoch
    # Taken from MSAL's cache rather than just issued: Power BI may still reject it (revoked,
    # or expired early), so a 401 on a call made with it is worth one retry with a fresh token.
    from_cache: bool = False


@dataclass(frozen=True)
class EntraAnswer:
    """How Entra ID last answered MSAL: the status (0 when it could not be reached), when, and the
    Retry-After it asked for (None when absent or malformed)."""

    url: str
    status: int
    at: float  # monotonic seconds
    retry_after: float | None = None
    readable: bool = True  # a JSON object, as every Entra answer is

    @property
    def unavailable(self) -> bool:
        """Down, overloaded or throttling, or not Entra ID answering at all (an HTML page from a proxy or an
        outage page instead of JSON, at any status): worth trying again later, not a refusal. An unreadable
        OpenID configuration is the exception: that points at a wrong authority host (see ``_failure``)."""
        if self.status == 0 or self.status == 429 or self.status >= 500:
            return True
        return not self.readable and not _is_discovery(self.url)


class MsalHttpClient:
    """The ``http_client`` MSAL calls: our HttpClient (retries, deadline), recording Entra's last answer.

    MSAL turns Entra's failures into different things (an ``MsalServiceError`` for a 5xx, a dict for a
    429 or a managed identity failure, a ``ValueError`` for a body that is not JSON) and, for a few
    seconds, replays a recent 429 or 5xx without calling out. What Entra really answered, kept here,
    is what tells unavailability from a refusal.
    """

    def __init__(self, http: HttpClient) -> None:
        self.http = http
        self.last: EntraAnswer | None = None

    def _send(self, method: str, url: str, **kwargs: Any) -> requests.Response:
        clock = self.http.clock
        try:
            response = self.http.request(method, url, service="entra", **kwargs)
        except (UpstreamUnreachable, UpstreamTimeout):
            self.last = EntraAnswer(_host(url), 0, clock.monotonic())
            raise
        retry_after = retry_after_seconds(response.headers.get("Retry-After"), clock)
        self.last = EntraAnswer(_host(url), response.status_code, clock.monotonic(), retry_after, _is_json(response))
        return response

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        return self._send("GET", url, params=params, headers=headers, **kwargs)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self._send("POST", url, params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        """The session belongs to the worker, not to MSAL: nothing to close."""


class EntraTokenProvider:
    def __init__(self, settings: Settings, http: HttpClient, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._http = MsalHttpClient(http)
        self._cache = msal.TokenCache()
        self._app: msal.ClientApplication | msal.ManagedIdentityClient | None = None
        # POWERBI_CLIENT_ASSERTION=managed_identity: the trusted identity's token, MSAL's client assertion.
        self.assertion: ManagedIdentityAssertion | None = None
        self._lock = threading.Lock()
        self._expiry: dict[str, float] = {}  # the access token MSAL holds -> when it expires
        # Everything the process holds that could sign in, kept out of every log line.
        certificate = settings.sign_in.client_certificate
        for secret in (
            settings.sign_in.password,
            settings.sign_in.client_secret,
            certificate.private_key if certificate else None,
            settings.sign_in.identity_header,
        ):
            register_secret(secret, lasting=True)

    def token(self, min_seconds: float, *, fresh: bool = False) -> AccessToken:
        """A Power BI access token with at least ``min_seconds`` of life left.

        ``fresh`` bypasses MSAL's cache: for a retry after Power BI rejected a cached token.
        """
        context = current_context(self.clock)
        if not self._lock.acquire(timeout=max(0.0, context.deadline.remaining())):
            raise UpstreamTimeout("Entra ID did not answer in time.", cause="waited too long for another sign-in")
        try:
            if fresh:
                self._drop_access_tokens()
            token = self._acquire()
            if token.expires_at - self.clock.now() < min_seconds:
                self._drop_access_tokens()
                token = self._acquire()
                left = token.expires_at - self.clock.now()
                if left < min_seconds:
                    logger.warning(
                        "Entra ID issues tokens with %.0f s of life, less than the %.0f s asked for: embed "
                        "tokens will be shorter than POWERBI_MIN_TOKEN_MINUTES",
                        left,
                        min_seconds,
                    )
            return token
        finally:
            self._lock.release()

    def _application(self) -> msal.ClientApplication | msal.ManagedIdentityClient:
        if self._app is None:
            s = self.settings
            if s.sign_in.mode == "ManagedIdentity":
                # App Service and Functions expose IDENTITY_ENDPOINT and IDENTITY_HEADER; MSAL reads them.
                identity = (
                    msal.UserAssignedManagedIdentity(client_id=s.sign_in.managed_identity_client_id)
                    if s.sign_in.managed_identity_client_id
                    else msal.SystemAssignedManagedIdentity()
                )
                self._app = msal.ManagedIdentityClient(identity, http_client=self._http, token_cache=self._cache)
                return self._app
            common: dict[str, Any] = {
                "authority": s.sign_in.authority,
                "instance_discovery": False,
                "http_client": self._http,
                "token_cache": self._cache,
            }
            credential: str | dict[str, Any] | None = s.sign_in.client_secret
            if s.sign_in.client_assertion:
                self.assertion = ManagedIdentityAssertion(
                    s.sign_in.managed_identity_client_id or "", s.sign_in.federated_audience, self._http
                )
                credential = {"client_assertion": self.assertion}
            elif s.sign_in.client_certificate:
                # MSAL computes the thumbprint (SHA-256) from the certificate itself.
                credential = {
                    "private_key": s.sign_in.client_certificate.private_key,
                    "public_certificate": s.sign_in.client_certificate.certificate,
                }
            self._http.last = None
            try:
                if credential:
                    self._app = msal.ConfidentialClientApplication(
                        s.sign_in.client_id, client_credential=credential, **common
                    )
                else:
                    logger.warning(
                        "POWERBI_CLIENT_SECRET is not set: signing in as a public client, which MSAL "
                        "deprecates for username and password; set a client secret to use a confidential client"
                    )
                    self._app = msal.PublicClientApplication(s.sign_in.client_id, **common)
            except _failures() as exc:
                raise self._failure(exc, f"OpenID configuration of {s.sign_in.authority}") from exc
        return self._app

    def _acquire(self) -> AccessToken:
        s = self.settings
        app = self._application()
        scopes = [s.powerbi.scope]
        try:
            if isinstance(app, msal.ManagedIdentityClient):
                result = app.acquire_token_for_client(resource=s.powerbi.resource)  # looks in the cache first
            elif s.sign_in.mode == "ServicePrincipal":
                result = app.acquire_token_for_client(scopes)  # looks in the cache first
            else:
                accounts = app.get_accounts(username=s.sign_in.username)
                result = app.acquire_token_silent(scopes, account=accounts[0]) if accounts else None
                if not result:
                    result = app.acquire_token_by_username_password(
                        s.sign_in.username, s.sign_in.password, scopes=scopes
                    )
        except _failures() as exc:
            raise self._failure(exc, "token") from exc
        except AssertionRefused as exc:  # the managed identity behind the client assertion got no token
            raise self._refusal(exc.identity, exc.result) from None
        if "access_token" not in result:
            raise self._refusal(app, result)
        self._register_tokens(result)
        value, from_cache = result["access_token"], result.get("token_source") == "cache"
        # The expiry is fixed when the token is issued, on this provider's clock, and kept for when MSAL
        # serves it again from its cache (whose own arithmetic runs on the system clock).
        expires_at = self._expiry.get(value) if from_cache else None
        if expires_at is None:
            expires_at = self.clock.now() + int(result.get("expires_in", 0))
            self._expiry = {value: expires_at}  # one scope, one account: MSAL holds one access token
        return AccessToken(value, expires_at, from_cache=from_cache)

    def _unavailable(self, cause: str) -> SignInUnavailable | None:
        """The answer when Entra's last answer says it is down or throttling (MSAL may be replaying it)."""
        last = self._http.last
        if last is None or not last.unavailable:
            return None
        retry_after = DEFAULT_RETRY_AFTER_SECONDS
        if last.retry_after is not None:
            # Entra's own figure, less what has passed since it said it (MSAL waits as long before asking again).
            retry_after = max(1, math.ceil(last.retry_after - (self.clock.monotonic() - last.at)))
        what = "unreachable" if last.status == 0 else f"HTTP {last.status}" + ("" if last.readable else " not JSON")
        return SignInUnavailable(
            "Entra ID is unavailable or throttling the sign-in; try again after the time in Retry-After.",
            retry_after=retry_after,
            cause=f"Entra ID {what} on {last.url} ({cause}); Retry-After {retry_after} s",
        )

    def _failure(self, exc: Exception, step: str) -> EmbedError:
        """What an exception raised by MSAL (or by our HTTP client inside MSAL) means."""
        name = type(exc).__name__
        if (unavailable := self._unavailable(f"{step}: {name}")) is not None:
            return unavailable
        last = self._http.last
        if isinstance(exc, ValueError | RuntimeError) and last is not None and _is_discovery(last.url):
            # MSAL raises these when the authority's OpenID configuration cannot be read:
            # an unknown tenant (AADSTS90002) or a host that is not Entra ID.
            code = _aadsts(f"{exc} {exc.__context__}")  # MSAL keeps Entra's answer in the context
            if code is not None or last.status != 200 or not last.readable:
                return SignInFailed(
                    sign_in_message(code)
                    if code
                    else "Entra ID's configuration could not be read: check POWERBI_AUTHORITY_HOST and "
                    "POWERBI_TENANT_ID.",
                    cause=f"OpenID configuration of {self.settings.sign_in.authority} unavailable: HTTP {last.status} "
                    f"{name}" + (f" AADSTS{code}" if code else ""),
                )
        if isinstance(exc, (ValueError, *_jwt_errors())):
            # Anything else MSAL refuses before it signs in: a certificate or key it cannot use, say.
            first_line = (str(exc).splitlines() or [""])[0][:200]
            return ConfigurationError(
                "MSAL cannot use the sign-in settings: check the client certificate "
                "(POWERBI_CLIENT_CERTIFICATE or POWERBI_CLIENT_CERTIFICATE_PATH: the certificate with its "
                f"matching, unencrypted private key) and the other sign-in settings ({name}: {first_line}).",
                cause=f"MSAL {step}: {name}: {first_line}",
            )
        status = last.status if last is not None else "no answer"
        return SignInFailed(f"Entra ID answered HTTP {status} to the sign-in.", cause=f"Entra ID HTTP {status} {name}")

    def _refusal(self, app: msal.ClientApplication | msal.ManagedIdentityClient, result: dict[str, Any]) -> EmbedError:
        """The error for MSAL's dict without a token: unavailability (429, a managed identity 5xx) or a refusal."""
        codes = result.get("error_codes") or [_aadsts(result.get("error_description", ""))]
        code = codes[0] if codes else None
        if (unavailable := self._unavailable(f"error {result.get('error')}")) is not None:
            return unavailable
        first_line = (result.get("error_description") or "").splitlines()[:1]
        message = sign_in_message(code)
        if isinstance(app, msal.ManagedIdentityClient) and code is None:
            message = (
                "The managed identity could not get a token: check that the app has a managed identity "
                "(and, for a user-assigned one, POWERBI_MANAGED_IDENTITY_CLIENT_ID)."
            )
        return SignInFailed(
            message,
            cause=f"Entra ID error {result.get('error')} (AADSTS{code}) correlation_id="
            f"{result.get('correlation_id')}: {' '.join(first_line)[:200]}",
        )

    def _register_tokens(self, result: dict[str, Any]) -> None:
        """Every access and refresh token MSAL holds is a secret for the logs."""
        register_secret(result.get("access_token"))
        register_secret(result.get("refresh_token"))
        if result.get("token_source") != "cache":
            for entry in self._cache.search(msal.TokenCache.CredentialType.REFRESH_TOKEN):
                register_secret(entry.get("secret"))

    def _drop_access_tokens(self) -> None:
        """Forget cached access tokens so MSAL fetches a new one (with the refresh token for a master
        user, with its credentials for a service principal or managed identity). The cache is this
        provider's alone, so every access token in it is ours."""
        for entry in list(self._cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            self._cache.remove_at(entry)


def _aadsts(text: str) -> int | None:
    match = _AADSTS.search(text)
    return int(match.group(1)) if match else None


def _is_discovery(url: str) -> bool:
    return url.endswith("/.well-known/openid-configuration")


def _is_json(response: requests.Response) -> bool:
    try:
        return isinstance(response.json(), dict)
    except ValueError:
        return False


def _host(url: str) -> str:
    """Scheme, host and path only: a user realm URL's query and a token request's body are never kept."""
    return url.split("?", 1)[0]
