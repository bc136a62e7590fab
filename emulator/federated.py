"""The fake's federated identity credentials: an app registration that trusts a managed identity.

What Microsoft documents ("Configure an application to trust a managed identity"): the app registration
holds federated identity credentials (issuer, subject, audiences); a client signs in with
``client_assertion_type=urn:ietf:params:oauth:client-assertion-type:jwt-bearer`` and, as the assertion, a
token that the *user-assigned* managed identity got for the token-exchange audience
(``api://AzureADTokenExchange``; ``...USGov`` and ``...China`` in those clouds). Entra ID accepts it when a
credential of the app matches the token's issuer (``https://login.microsoftonline.com/{tenant}/v2.0``), its
subject (the identity's object, or principal, id) and its audience, and the token is signed by that issuer.

Here the issuer is the emulator's own managed identity endpoint: for a token-exchange audience it answers a
JWT (RS256, named by ``kid``) with the claims Entra puts in such a token, signed by a key only the emulator
holds, so an assertion counts only if that endpoint issued it. An assertion that names a certificate
thumbprint (``x5t``) is a certificate assertion instead, checked by :mod:`emulator.entra`.

Refusals, in Entra's order and words: no credential for the issuer (AADSTS700211), none for the subject
(AADSTS700213), none for the audience (AADSTS70021), a signature the issuer's keys do not verify
(AADSTS50013), an expired token (AADSTS700024).
"""

from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from emulator.catalog import same
from emulator.wire import b64url

if TYPE_CHECKING:
    from emulator.server import FakeUpstream

# The token-exchange audience of each cloud's Entra ID, as Microsoft documents it.
TOKEN_EXCHANGE_AUDIENCES = (
    "api://AzureADTokenExchange",
    "api://AzureADTokenExchangeUSGov",
    "api://AzureADTokenExchangeChina",
)
_HELP = (
    "Please check your federated identity credential Subject, Audience and Issuer against the presented "
    "assertion. https://learn.microsoft.com/entra/workload-id/workload-identity-federation"
)
# AADSTS code -> (OAuth error, message) for the refusals above; placeholders filled from the assertion.
MESSAGES: dict[int, tuple[str, str]] = {
    700211: (
        "invalid_client",
        f"No matching federated identity record found for presented assertion issuer '{{iss}}'. {_HELP}",
    ),
    700213: (
        "invalid_client",
        f"No matching federated identity record found for presented assertion subject '{{sub}}'. {_HELP}",
    ),
    70021: (
        "invalid_request",
        "No matching federated identity record found for presented assertion. Assertion Issuer: '{iss}'. "
        "Assertion Subject: '{sub}'. Assertion Audience: '{aud}'. "
        "https://learn.microsoft.com/entra/workload-id/workload-identity-federation",
    ),
}
_LIFETIME_SECONDS = 3600  # a managed identity token for the exchange lives about an hour; MSAL refreshes it


@dataclass(frozen=True)
class FederatedCredential:
    """One federated identity credential of an app registration (Graph's federatedIdentityCredential)."""

    issuer: str
    subject: str
    audiences: tuple[str, ...] = ("api://AzureADTokenExchange",)
    name: str = "managed-identity"


def credential_from_json(value: dict[str, Any]) -> FederatedCredential:
    """From ``--config``'s ``federated_credentials`` entries: Graph's shape (``audiences`` a list)."""
    audiences = tuple(value.get("audiences") or ("api://AzureADTokenExchange",))
    return FederatedCredential(value["issuer"], value["subject"], audiences, value.get("name", "managed-identity"))


def principal_id(fake: FakeUpstream, identity_client_id: str) -> str:
    """The object (principal) id of a managed identity: configured, else derived from its client id."""
    for client, principal in fake.identity_principals.items():
        if same(client, identity_client_id):
            return principal
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"managed-identity:{identity_client_id.lower()}"))


def issuer(fake: FakeUpstream) -> str:
    """The issuer of the emulator's managed identity tokens: Entra's, for the emulator's tenant."""
    return f"https://login.microsoftonline.com/{fake.tenant_guid}/v2.0"


@dataclass
class SigningKey:
    """The key the emulator signs managed identity tokens with, made on first use (RSA takes a moment)."""

    kid: str = field(default_factory=lambda: uuid.uuid4().hex)
    _key: rsa.RSAPrivateKey | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def private(self) -> rsa.RSAPrivateKey:
        with self._lock:
            if self._key is None:
                self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
            return self._key


def exchange_token(fake: FakeUpstream, identity: str, audience: str) -> tuple[str, int]:
    """A JWT for ``audience`` from the managed identity ``identity`` (its client id), and its expiry."""
    now = int(fake.clock())
    expires_at = now + _LIFETIME_SECONDS
    subject = principal_id(fake, identity)
    claims = {
        "aud": audience,
        "iss": issuer(fake),
        "iat": now,
        "nbf": now,
        "exp": expires_at,
        "sub": subject,
        "oid": subject,
        "azp": identity,
        "tid": fake.tenant_guid,
        "ver": "2.0",
    }
    header = {"alg": "RS256", "typ": "JWT", "kid": fake.identity_signing_key.kid}
    signed = f"{b64url(json.dumps(header).encode())}.{b64url(json.dumps(claims).encode())}"
    signature = fake.identity_signing_key.private().sign(signed.encode(), padding.PKCS1v15(), hashes.SHA256())
    return f"{signed}.{b64url(signature)}", expires_at


def assertion_failure(
    fake: FakeUpstream, header: dict[str, Any], claims: dict[str, Any], signed: bytes, signature: bytes, client_id: str
) -> tuple[int, dict[str, str]] | None:
    """Why Entra refuses ``claims`` as a federated assertion for the app ``client_id``: (code, context), or None."""
    context = {name: str(claims.get(name, "")) for name in ("iss", "sub", "aud")}
    audiences = claims.get("aud")
    audiences = audiences if isinstance(audiences, list) else [audiences]
    trusted = [c for c in fake.federated_credentials.get(client_id, []) if c.issuer == context["iss"]]
    if not trusted:
        return 700211, context
    trusted = [c for c in trusted if same(c.subject, context["sub"])]
    if not trusted:
        return 700213, context
    if not any(audience in credential.audiences for credential in trusted for audience in audiences):
        return 70021, context
    if not _signed_by_the_emulator(fake, header, context["iss"], signed, signature):
        return 50013, {"message": "Assertion failed signature validation. [Reason - The key was not found.]"}
    now = fake.clock()
    if not isinstance(claims.get("exp"), int | float) or claims["exp"] <= now or claims.get("nbf", 0) > now:
        return 700024, {"now": str(int(now)), "exp": str(claims.get("exp"))}
    return None


def _signed_by_the_emulator(fake: FakeUpstream, header: dict[str, Any], iss: str, signed: bytes, sig: bytes) -> bool:
    """The issuer's keys are the emulator's own: only its managed identity endpoint signs with them."""
    if iss != issuer(fake) or header.get("alg") != "RS256" or header.get("kid") != fake.identity_signing_key.kid:
        return False
    try:
        fake.identity_signing_key.private().public_key().verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
    except InvalidSignature:
        return False
    return True
