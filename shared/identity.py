"""The row-level-security identity: taken only from what App Service Authentication vouches for.

With ``POWERBI_RLS_USERNAME_SOURCE=principal`` the effective username is the signed-in
user's: the ``X-MS-CLIENT-PRINCIPAL-NAME`` header, or one claim of the base64 JSON in
``X-MS-CLIENT-PRINCIPAL``. App Service sets these headers and drops any a caller sends,
so they cannot be forged; nothing else in a request (query, body, other headers) is read.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass

from shared.errors import InvalidRequest, Unauthenticated
from shared.settings import Settings

PRINCIPAL_NAME_HEADER = "x-ms-client-principal-name"
PRINCIPAL_HEADER = "x-ms-client-principal"
MAX_USERNAME = 256  # Power BI's limit for an effective username


@dataclass(frozen=True)
class Identity:
    """An effective identity for Power BI: who, in which roles, with what custom data."""

    username: str
    roles: tuple[str, ...] = ()
    custom_data: str | None = None


def identity_for(headers: Mapping[str, str], settings: Settings) -> Identity | None:
    """The caller's identity when row-level security takes it from the principal, else None."""
    if settings.rls_username_source == "none":
        return None
    lowered = {name.lower(): value for name, value in headers.items()}
    claims = _claims(lowered.get(PRINCIPAL_HEADER, ""))
    if settings.rls_username_claim:
        username = claims.get(settings.rls_username_claim, "")
    else:
        username = lowered.get(PRINCIPAL_NAME_HEADER, "")
    if not username:
        raise Unauthenticated("Sign in first: this function issues tokens only to signed-in users.")
    if len(username) > MAX_USERNAME or any(c.isspace() for c in username):
        raise InvalidRequest(
            "The signed-in user's name cannot be used for row-level security: Power BI accepts at most "
            f"{MAX_USERNAME} characters and no spaces."
        )
    custom_data = claims.get(settings.rls_custom_data_claim) if settings.rls_custom_data_claim else None
    return Identity(username, settings.rls_roles, custom_data)


def _claims(encoded: str) -> dict[str, str]:
    """``{"claims": [{"typ", "val"}, ...]}`` as a dict (the first value of each type)."""
    if not encoded:
        return {}
    try:
        principal = json.loads(base64.b64decode(encoded + "=" * (-len(encoded) % 4)))
        pairs = [(str(c["typ"]), str(c["val"])) for c in principal.get("claims", [])]
    except (binascii.Error, ValueError, TypeError, KeyError, AttributeError):
        raise Unauthenticated("The signed-in user's principal could not be read.") from None
    claims: dict[str, str] = {}
    for typ, val in pairs:
        claims.setdefault(typ, val)
    return claims
