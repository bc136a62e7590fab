"""The client assertion of an app registration that trusts a user-assigned managed identity: no secret to rotate.

With ``POWERBI_CLIENT_ASSERTION=managed_identity``, the app (service principal, or a master user's
confidential client) proves who it is with the managed identity's token for the cloud's token-exchange
audience (``api://AzureADTokenExchange``; ``...USGov``, ``...China``), which Entra ID accepts because the app
registration holds a federated identity credential for that identity (issuer
``https://login.microsoftonline.com/{tenant}/v2.0``, subject the identity's object id). MSAL Python takes it
as ``client_credential={"client_assertion": <callable>}`` and calls it only when it sends a token request.

The identity's token comes from MSAL's ``ManagedIdentityClient`` (App Service's IDENTITY_ENDPOINT), with a
token cache of its own: it is reused until it expires, then fetched again.
"""

from __future__ import annotations

from typing import Any

import msal

from shared.redact import register_secret


class AssertionRefused(Exception):
    """The managed identity endpoint gave no token (MSAL's answer, a dict without ``access_token``)."""

    def __init__(self, result: dict[str, Any], identity: msal.ManagedIdentityClient) -> None:
        super().__init__(result.get("error"))
        self.result = result
        self.identity = identity


class ManagedIdentityAssertion:
    """A callable for MSAL: the user-assigned identity's current token for ``audience``."""

    def __init__(self, identity_client_id: str, audience: str, http_client: Any) -> None:
        self.identity_client_id = identity_client_id
        self.audience = audience
        self._identity = msal.ManagedIdentityClient(
            msal.UserAssignedManagedIdentity(client_id=identity_client_id),
            http_client=http_client,
            token_cache=msal.TokenCache(),
        )
        self._last: str | None = None

    def __call__(self) -> str:
        result = self._identity.acquire_token_for_client(resource=self.audience)  # from its cache while valid
        if "access_token" not in result:
            raise AssertionRefused(result, self._identity)
        token: str = result["access_token"]
        register_secret(token)
        self._last = token
        return token

    def presented(self) -> dict[str, str]:
        """Issuer, subject and audience of the last assertion (what a federated credential must match), for
        the doctor; empty before the first. The token is Entra's to verify, so it is only read here."""
        if self._last is None:
            return {}
        import jwt  # PyJWT (with cryptography) only for the doctor's look at it: not at the worker's start

        try:
            claims = jwt.decode(self._last, options={"verify_signature": False})
        except jwt.PyJWTError:
            return {}
        return {name: str(claims.get(name, "")) for name in ("iss", "sub", "aud", "tid")}
