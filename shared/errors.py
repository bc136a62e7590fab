"""The one exception tree of the function, each class carrying its HTTP answer.

Every failure the function can answer is an ``EmbedError``: a stable ``code`` and a
plain ``message`` for the caller, a ``status`` and extra ``headers`` for HTTP, and a
``cause`` for the log line (never shown to the caller). ``responses.error_response``
is the one place these become HTTP answers. No message or cause may carry a secret
or a token.

Two audiences, two texts. A 4xx (``ClientError``) is about the request, and its ``message``
is answered in production too: it says what to fix in the request and never names a setting,
an auth mode, a tenant, an AADSTS code or an upstream message; what the operator needs (the
setting that decided) goes in ``hint``, shown only with error details on, and in the log line.
A 5xx is about the function or upstream: in production it answers only its code's generic
``PUBLIC_MESSAGES`` text; its ``message`` (which may name settings, never their values) is
for the log, the doctor, and answers with details on.

Every answer caused by a transient upstream fault (throttling, 5xx, unreachable, timeout)
carries ``Retry-After``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Upstream:
    """What Power BI answered (status, its error code and message): for the log and the doctor."""

    status: int
    code: str = ""
    message: str = ""


class EmbedError(Exception):
    status = 500
    code = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        cause: str = "",
        request_id: str | None = None,
        headers: dict[str, str] | None = None,
        upstream: Upstream | None = None,
        hint: str = "",
    ) -> None:
        super().__init__(message)
        self.message = message
        self.cause = cause or (f"{message} {hint}" if hint else message)
        self.request_id = request_id
        self.headers = headers or {}
        self.upstream = upstream
        self.hint = hint  # for the operator: with error details on only

    @property
    def detailed_message(self) -> str:
        """The message with the operator's hint: for answers with error details on."""
        return f"{self.message} {self.hint}" if self.hint else self.message


class ClientError(EmbedError):
    """A 4xx: its message says what is wrong with the request, in production too (see the module docstring)."""

    status = 400
    code = "invalid_request"


class InvalidRequest(ClientError):
    status = 400
    code = "invalid_request"


class Unauthenticated(ClientError):
    """Row-level security needs a signed-in user and there is none."""

    status = 401
    code = "unauthenticated"


class NotAllowed(ClientError):
    status = 403
    code = "not_allowed"


class NotFound(ClientError):
    status = 404
    code = "not_found"


class Throttled(EmbedError):
    """Power BI still throttles (429), or is unavailable (500, 502, 503, 504: answered 503), after our retries."""

    code = "throttled"

    def __init__(
        self,
        message: str,
        *,
        status: int,
        retry_after: int,
        cause: str = "",
        request_id: str | None = None,
        upstream: Upstream | None = None,
    ) -> None:
        headers = {"Retry-After": str(retry_after)}
        super().__init__(message, cause=cause, request_id=request_id, headers=headers, upstream=upstream)
        self.status = status
        self.code = "throttled" if status == 429 else "unavailable"


class ConfigurationError(EmbedError):
    status = 500
    code = "configuration_error"

    def __init__(self, message: str, *, cause: str = "", problems: tuple[str, ...] = ()) -> None:
        super().__init__(message, cause=cause)
        self.problems = problems or (message,)  # each problem on its own, for /api/health with details


class SignInFailed(EmbedError):
    """Entra ID refused to give us a token."""

    status = 502
    code = "sign_in_failed"


class SignInUnavailable(EmbedError):
    """Entra ID is unavailable or throttling (5xx, 429, unreachable) after our retries: not a refusal."""

    status = 503
    code = "signin_unavailable"

    def __init__(self, message: str, *, retry_after: int, cause: str = "") -> None:
        super().__init__(message, cause=cause, headers={"Retry-After": str(retry_after)})
        self.retry_after = retry_after


class DirectoryUnavailable(EmbedError):
    """The customer directory (an Azure Storage table) cannot be read and holds no earlier entry to serve."""

    status = 503
    code = "unavailable"

    def __init__(self, message: str, *, retry_after: int, cause: str = "") -> None:
        super().__init__(message, cause=cause, headers={"Retry-After": str(retry_after)})


class PowerBIRefused(EmbedError):
    """Power BI answered with an error we cannot pass on as our own."""

    status = 502
    code = "powerbi_error"


# When Power BI could not be reached or did not answer in time: a short outage or a slow moment,
# worth one more try soon (the browser helper waits this long).
TRANSIENT_RETRY_AFTER_SECONDS = 10


class UpstreamUnreachable(EmbedError):
    status = 502
    code = "upstream_unreachable"

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message, cause=cause, headers={"Retry-After": str(TRANSIENT_RETRY_AFTER_SECONDS)})


class UpstreamTimeout(EmbedError):
    status = 504
    code = "upstream_timeout"

    def __init__(self, message: str, *, cause: str = "") -> None:
        super().__init__(message, cause=cause, headers={"Retry-After": str(TRANSIENT_RETRY_AFTER_SECONDS)})


# What a production 5xx answer says for each code: nothing about the configuration (no setting, auth
# mode, tenant, AADSTS code, Power BI message or RequestId). The detailed message is in the log line,
# in the doctor, and in answers only with details on (see responses.py). A 4xx answers its own message;
# these texts are its fallback only.
PUBLIC_MESSAGES: dict[str, str] = {
    "invalid_request": "The request is not valid.",
    "unauthenticated": "Sign in to see this item.",
    "not_allowed": "This item is not available.",
    "not_found": "The item was not found.",
    "throttled": "Power BI is busy; try again after the time in Retry-After.",
    "unavailable": "A service the function needs is unavailable; try again after the time in Retry-After.",
    "signin_unavailable": "The function cannot sign in to Power BI right now; try again after the time in Retry-After.",
    "configuration_error": "The function is not configured correctly.",
    "sign_in_failed": "The function could not sign in to Power BI.",
    "powerbi_error": "Power BI refused the request.",
    "upstream_unreachable": "Power BI could not be reached.",
    "upstream_timeout": "Power BI did not answer in time.",
    "internal_error": "The function failed unexpectedly.",
}


def public_message(code: str) -> str:
    return PUBLIC_MESSAGES.get(code, "The request failed.")


# Causes and fixes for the AADSTS codes users of this path hit most. The codes
# are Microsoft's; the words are ours, written for the person who has to fix it.
AADSTS_HINTS: dict[int, str] = {
    50034: "the user account does not exist in this tenant: check POWERBI_USERNAME and POWERBI_TENANT_ID",
    50076: "the master user must use multi-factor authentication, which a password sign-in cannot do: "
    "exclude this account from MFA or use a service principal",
    50079: "the master user must register for multi-factor authentication, which a password sign-in "
    "cannot do: exclude this account from MFA or use a service principal",
    50126: "wrong username or password: check POWERBI_USERNAME and POWERBI_PASSWORD",
    53003: "a Conditional Access policy blocked the sign-in: exclude this account or app from the policy",
    65001: "the app has no consent for the Power BI permissions: grant admin consent in the app registration",
    700016: "no app with this client id in this tenant: check POWERBI_CLIENT_ID and POWERBI_TENANT_ID",
    7000215: "the client secret is wrong: check POWERBI_CLIENT_SECRET (the secret's value, not its id)",
    7000222: "the client secret has expired: create a new one and update POWERBI_CLIENT_SECRET",
    90002: "the tenant was not found: check POWERBI_TENANT_ID",
    # POWERBI_CLIENT_ASSERTION=managed_identity: the app registration must trust the identity (a federated
    # identity credential); the doctor names the issuer and subject to trust.
    700211: "the app registration has no federated identity credential for the managed identity's issuer: add "
    "one for https://login.microsoftonline.com/<tenant id>/v2.0 (or your cloud's), or run python -m shared.doctor",
    700213: "the app registration's federated identity credential names another subject: it must be the object "
    "(principal) id of the identity POWERBI_MANAGED_IDENTITY_CLIENT_ID names",
    70021: "no federated identity credential of the app registration matches the managed identity's token "
    "(issuer, subject and audience api://AzureADTokenExchange, or your cloud's): run python -m shared.doctor",
}


def sign_in_message(code: int | None) -> str:
    """Plain words for an AADSTS code."""
    if code is None:
        return "Entra ID refused the sign-in."
    hint = AADSTS_HINTS.get(code, "see Microsoft's AADSTS error reference for this code")
    return f"Entra ID refused the sign-in (AADSTS{code}): {hint}."


def transient(error: BaseException) -> bool:
    """A fault upstream that may pass by itself: Power BI throttling or unavailable (429, 5xx), Entra ID
    unavailable, a timeout, an unreachable host. Not a refusal (401, 403), not a 404, not a setting: after
    those, nothing kept from before may be served (access removed, item deleted)."""
    if isinstance(error, Throttled | SignInUnavailable | UpstreamUnreachable | UpstreamTimeout):
        return True
    return isinstance(error, PowerBIRefused) and error.upstream is not None and error.upstream.status >= 500
