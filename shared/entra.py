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
"""

from __future__ import annotations

import logging
import re
import threading
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import msal
import requests

from shared.clock import Clock
from shared.errors import SignInFailed, UpstreamTimeout, sign_in_message
from shared.http import HttpClient, current_context
from shared.settings import Settings

logger = logging.getLogger(__name__)

_AADSTS = re.compile(r"AADSTS(\d+)")


@dataclass(frozen=True)
class AccessToken:
    value: str = field(repr=False)
    expires_at: float  # seconds since the epoch
    # Taken from MSAL's cache rather than just issued: Power BI may still reject it (revoked,
    # or expired early), so a 401 on a call made with it is worth one retry with a fresh token.
    from_cache: bool = False


class MsalHttpClient:
    """The ``http_client`` MSAL calls: our HttpClient, plus the authority's port.

    MSAL builds its user-realm discovery URL from the authority's host name without
    its port (``https://{host}/common/userrealm/...``). With an authority on a
    non-default port (the local emulator) that call would go to port 443, so it is
    sent to the authority's port.
    """

    def __init__(self, http: HttpClient, authority_host: str) -> None:
        self.http = http
        parts = urlsplit(authority_host)
        self._portless = f"https://{parts.hostname}/"
        self._ported = f"https://{parts.hostname}:{parts.port}/" if parts.port not in (None, 443) else None

    def _route(self, url: str) -> str:
        if self._ported and url.lower().startswith(self._portless):
            return self._ported + url[len(self._portless) :]
        return url

    def get(self, url: str, params: Any = None, headers: Any = None, **kwargs: Any) -> requests.Response:
        return self.http.request("GET", self._route(url), params=params, headers=headers, **kwargs)

    def post(
        self, url: str, params: Any = None, data: Any = None, headers: Any = None, **kwargs: Any
    ) -> requests.Response:
        return self.http.request("POST", self._route(url), params=params, data=data, headers=headers, **kwargs)

    def close(self) -> None:
        """The session belongs to the worker, not to MSAL: nothing to close."""


class EntraTokenProvider:
    def __init__(self, settings: Settings, http: HttpClient, clock: Clock) -> None:
        self.settings = settings
        self.clock = clock
        self._http = MsalHttpClient(http, settings.authority_host)
        self._cache = msal.TokenCache()
        self._app: msal.ClientApplication | msal.ManagedIdentityClient | None = None
        self._lock = threading.Lock()

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
            if s.auth_mode == "ManagedIdentity":
                # App Service and Functions expose IDENTITY_ENDPOINT and IDENTITY_HEADER; MSAL reads them.
                identity = (
                    msal.UserAssignedManagedIdentity(client_id=s.managed_identity_client_id)
                    if s.managed_identity_client_id
                    else msal.SystemAssignedManagedIdentity()
                )
                self._app = msal.ManagedIdentityClient(identity, http_client=self._http, token_cache=self._cache)
                return self._app
            common: dict[str, Any] = {
                "authority": s.authority,
                "instance_discovery": False,
                "http_client": self._http,
                "token_cache": self._cache,
            }
            credential: str | dict[str, str] | None = s.client_secret
            if s.client_certificate:
                # MSAL computes the thumbprint (SHA-256) from the certificate itself.
                credential = {
                    "private_key": s.client_certificate.private_key,
                    "public_certificate": s.client_certificate.certificate,
                }
            try:
                if credential:
                    self._app = msal.ConfidentialClientApplication(s.client_id, client_credential=credential, **common)
                else:
                    logger.warning(
                        "POWERBI_CLIENT_SECRET is not set: signing in as a public client, which MSAL "
                        "deprecates for username and password; set a client secret to use a confidential client"
                    )
                    self._app = msal.PublicClientApplication(s.client_id, **common)
            except (ValueError, RuntimeError, requests.HTTPError) as exc:
                # MSAL raises these when the authority's OpenID configuration cannot be read:
                # an unknown tenant (AADSTS90002) or a host that is not Entra ID.
                code = _aadsts(f"{exc} {exc.__context__}")  # MSAL keeps Entra's answer in the context
                unreadable = "Entra ID's configuration could not be read: check POWERBI_AUTHORITY_HOST and "
                raise SignInFailed(
                    sign_in_message(code) if code else unreadable + "POWERBI_TENANT_ID.",
                    cause=f"OpenID configuration of {s.authority} unavailable: {type(exc).__name__}"
                    + (f" AADSTS{code}" if code else ""),
                ) from exc
        return self._app

    def _acquire(self) -> AccessToken:
        s = self.settings
        app = self._application()
        scopes = [s.scope]
        try:
            if isinstance(app, msal.ManagedIdentityClient):
                result = app.acquire_token_for_client(resource=s.resource)  # looks in the cache first
            elif s.auth_mode == "ServicePrincipal":
                result = app.acquire_token_for_client(scopes)  # looks in the cache first
            else:
                accounts = app.get_accounts(username=s.username)
                result = app.acquire_token_silent(scopes, account=accounts[0]) if accounts else None
                if not result:
                    result = app.acquire_token_by_username_password(s.username, s.password, scopes=scopes)
        except requests.HTTPError as exc:
            status = exc.response.status_code if exc.response is not None else "no answer"
            raise SignInFailed(
                f"Entra ID answered HTTP {status} to the sign-in.", cause=f"Entra ID HTTP {status}"
            ) from exc
        if "access_token" not in result:
            codes = result.get("error_codes") or [_aadsts(result.get("error_description", ""))]
            code = codes[0] if codes else None
            first_line = (result.get("error_description") or "").splitlines()[:1]
            message = sign_in_message(code)
            if isinstance(app, msal.ManagedIdentityClient) and code is None:
                message = (
                    "The managed identity could not get a token: check that the app has a managed identity "
                    "(and, for a user-assigned one, POWERBI_MANAGED_IDENTITY_CLIENT_ID)."
                )
            raise SignInFailed(
                message,
                cause=f"Entra ID error {result.get('error')} (AADSTS{code}) correlation_id="
                f"{result.get('correlation_id')}: {' '.join(first_line)[:200]}",
            )
        return AccessToken(
            result["access_token"],
            self.clock.now() + int(result.get("expires_in", 0)),
            from_cache=result.get("token_source") == "cache",
        )

    def _drop_access_tokens(self) -> None:
        """Forget cached access tokens so MSAL fetches a new one (with the refresh token for a master
        user, with its credentials for a service principal or managed identity). The cache is this
        provider's alone, so every access token in it is ours."""
        for entry in list(self._cache.search(msal.TokenCache.CredentialType.ACCESS_TOKEN)):
            self._cache.remove_at(entry)


def _aadsts(text: str) -> int | None:
    match = _AADSTS.search(text)
    return int(match.group(1)) if match else None
