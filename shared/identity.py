"""The row-level-security identity: taken only from a principal the platform vouches for.

With ``POWERBI_RLS_USERNAME_SOURCE=principal`` the effective username is the signed-in
user's, read from one of two formats of the ``X-MS-CLIENT-PRINCIPAL`` header:

- App Service Authentication's: base64 JSON ``{"auth_typ", "name_typ", "role_typ",
  "claims": [{"typ", "val"}]}``, beside ``X-MS-CLIENT-PRINCIPAL-NAME`` and
  ``X-MS-CLIENT-PRINCIPAL-IDP``;
- Azure Static Web Apps' (a linked backend): base64 JSON ``{"identityProvider", "userId",
  "userDetails", "userRoles", ["claims"]}``, with no other principal header.

Either is believed only when the function app's own App Service Authentication runs
(``WEBSITE_AUTH_ENABLED=True``, checked in ``shared.settings``): it sets these headers and
drops any a caller sends, and linking the app to a Static Web App turns it on with an
identity provider that accepts only requests the site forwards. Nothing else in a request
(query, body, other headers) is read. The principal's identity provider must be the one
pinned by ``POWERBI_RLS_IDENTITY_PROVIDER``, and its ``tid`` one of
``POWERBI_RLS_ALLOWED_TENANTS`` when that is set. The customer directory
(``shared.customers.access``) reads the signed-in user's customer from the same trusted principal.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from shared.errors import InvalidRequest, Unauthenticated
from shared.settings import Settings, parse_guid

PRINCIPAL_NAME_HEADER = "x-ms-client-principal-name"
PRINCIPAL_IDP_HEADER = "x-ms-client-principal-idp"
PRINCIPAL_HEADER = "x-ms-client-principal"
PRINCIPAL_ID_HEADER = "x-ms-client-principal-id"
MAX_USERNAME = 256  # Power BI's limit for an effective username
# Roles Static Web Apps gives every visitor (and every signed-in user): they say nothing about a dataset.
SWA_BUILT_IN_ROLES = frozenset({"anonymous", "authenticated"})
# Entra ID's tenant claim: short in a token, the long URI after App Service maps it.
TENANT_CLAIMS = ("tid", "http://schemas.microsoft.com/identity/claims/tenantid")

_SIGN_IN = "Sign in first: this function issues tokens only to signed-in users."
_NOT_ACCEPTED = "This sign-in is not accepted here: sign in with the organisation's account."


@dataclass(frozen=True, slots=True)
class Identity:
    """An effective identity for Power BI: who, in which roles, with what custom data."""

    username: str
    roles: tuple[str, ...] = ()
    custom_data: str | None = None


@dataclass(frozen=True)
class Principal:
    """A signed-in user as the platform describes them, in either header format."""

    providers: tuple[str, ...]  # every provider name the platform stated (header, auth_typ, identityProvider)
    name: str  # X-MS-CLIENT-PRINCIPAL-NAME, or Static Web Apps' userDetails
    claims: Mapping[str, str] = field(default_factory=dict)  # the first value of each claim type
    roles: tuple[str, ...] = ()


def identity_for(headers: Mapping[str, str], settings: Settings) -> Identity | None:
    """The caller's identity when row-level security takes it from the principal, else None."""
    if settings.rls.username_source == "none":
        return None
    principal = trusted_principal(headers, settings)
    if settings.rls.username_claim:
        username = principal.claims.get(settings.rls.username_claim, "")
    else:
        username = principal.name
    if not username:
        raise Unauthenticated(_SIGN_IN)
    check_username(username)
    custom_data = principal.claims.get(settings.rls.custom_data_claim) if settings.rls.custom_data_claim else None
    return Identity(username, roles_for(principal, settings), custom_data)


def trusted_principal(headers: Mapping[str, str], settings: Settings) -> Principal:
    """The signed-in principal, if the trust rules accept it: its provider is the pinned one and its tenant
    one of the allowed; 401 otherwise (also when no one is signed in). Row-level security and the
    customer directory (``shared.customers.access``) both read the principal through this."""
    lowered = {name.lower(): value for name, value in headers.items()}
    principal = read_principal(lowered)
    if principal is None:
        raise Unauthenticated(_SIGN_IN)
    # With several providers enabled, a GitHub or Google account could carry a victim's name.
    if not principal.providers or any(p.lower() != settings.rls.identity_provider for p in principal.providers):
        raise Unauthenticated(
            _NOT_ACCEPTED,
            cause=f"principal of provider {','.join(principal.providers) or '(none)'} refused: "
            f"POWERBI_RLS_IDENTITY_PROVIDER is {settings.rls.identity_provider}",
        )
    if settings.rls.allowed_tenants is not None:
        tenant = next((principal.claims[c] for c in TENANT_CLAIMS if c in principal.claims), "")
        if parse_guid(tenant) not in settings.rls.allowed_tenants:
            cause = "principal refused: its tid is not in POWERBI_RLS_ALLOWED_TENANTS"
            raise Unauthenticated(_NOT_ACCEPTED, cause=cause)
    return principal


def principal_id(headers: Mapping[str, str], platform_vouches: bool) -> str | None:
    """The signed-in user's id (for the per-user budget), or None: no one signed in, or headers the
    platform does not vouch for (App Service Authentication off), which a caller could have written."""
    if not platform_vouches:
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    if header := lowered.get(PRINCIPAL_ID_HEADER, "").strip():
        return header
    encoded = lowered.get(PRINCIPAL_HEADER, "").strip()
    try:
        decoded = _decode(encoded) if encoded else {}
    except Unauthenticated:
        return None
    user = decoded.get("userId")  # Static Web Apps' format
    return str(user) if isinstance(user, str) and user else None


def check_username(username: str) -> None:
    """Refuse, before any upstream call, a name Power BI would refuse (a 502 from it otherwise)."""
    # Printable ASCII without the space: Power BI refuses spaces and anything non-ASCII.
    if len(username) > MAX_USERNAME or not all("!" <= c <= "~" for c in username):
        raise InvalidRequest(
            "The signed-in user's name cannot be used for row-level security: Power BI accepts at most "
            f"{MAX_USERNAME} printable ASCII characters and no spaces."
        )


def roles_for(principal: Principal, settings: Settings) -> tuple[str, ...]:
    """The roles to send: the setting's, or the principal's that POWERBI_RLS_ALLOWED_ROLES lists."""
    if settings.rls.roles_source == "setting":
        return settings.rls.roles
    # A role outside the allow-list is dropped, never sent; sorted, so one set of roles is one cache key.
    return tuple(sorted({r for r in principal.roles if r in settings.rls.allowed_roles}))


def read_principal(headers: Mapping[str, str]) -> Principal | None:
    """The principal in the (lower-cased) headers, or None when no one is signed in."""
    encoded = headers.get(PRINCIPAL_HEADER, "").strip()
    decoded = _decode(encoded) if encoded else {}
    if "identityProvider" in decoded:
        return _static_web_apps(decoded)
    name = headers.get(PRINCIPAL_NAME_HEADER, "").strip()
    if not (encoded or name):
        return None
    try:
        pairs = [(str(c["typ"]), str(c["val"])) for c in decoded.get("claims") or []]
        providers = [p for p in (headers.get(PRINCIPAL_IDP_HEADER, "").strip(), decoded.get("auth_typ")) if p]
        role_type = decoded.get("role_typ")
        roles = tuple(val for typ, val in pairs if role_type and typ == role_type)
        return Principal(tuple(str(p) for p in providers), name, _first_values(pairs), roles)
    except (TypeError, KeyError, AttributeError):
        raise Unauthenticated("The signed-in user's principal could not be read.") from None


def _static_web_apps(decoded: Mapping[str, Any]) -> Principal:
    """Static Web Apps' format: the provider, the user's name and roles; claims only if forwarded."""
    try:
        pairs = [(str(c["typ"]), str(c["val"])) for c in decoded.get("claims") or []]
        roles = tuple(str(r) for r in decoded.get("userRoles") or [] if str(r) not in SWA_BUILT_IN_ROLES)
        provider = str(decoded["identityProvider"] or "")
        name = str(decoded.get("userDetails") or "")
    except (TypeError, KeyError, AttributeError):
        raise Unauthenticated("The signed-in user's principal could not be read.") from None
    return Principal((provider,) if provider else (), name, _first_values(pairs), roles)


def _decode(encoded: str) -> dict[str, Any]:
    try:
        principal = json.loads(base64.b64decode(encoded + "=" * (-len(encoded) % 4)))
    except (binascii.Error, ValueError):
        raise Unauthenticated("The signed-in user's principal could not be read.") from None
    if not isinstance(principal, dict):
        raise Unauthenticated("The signed-in user's principal could not be read.")
    return principal


def _first_values(pairs: list[tuple[str, str]]) -> dict[str, str]:
    claims: dict[str, str] = {}
    for typ, val in pairs:
        claims.setdefault(typ, val)
    return claims
