"""The token step of a request: embed tokens by key, from the cache or one GenerateToken within the budget.

``EmbedTokens.get`` looks the plan's canonical key up in the one ``Cache`` (``shared.cache``) of embed
tokens (with the shared level, Redis, when configured). A token is handed out while
POWERBI_MIN_TOKEN_MINUTES remain; in the POWERBI_REFRESH_AHEAD_MINUTES before that it is still handed out
and re-minted once in the background (``_mint_ahead``: counted in the budget, never refused, the Entra
token renewed first when too short for it); on a miss, within the new-token budget (``shared.budget``),
one GenerateToken is made (``_mint``), shared by concurrent requests for that key; when that fails for a
transient fault, a token still valid for ``STALE_MIN_SECONDS`` is handed out instead (``cache=stale``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from shared import telemetry
from shared.background import Background
from shared.budget import Budget
from shared.cache import BACKGROUND_SECONDS, Cache, Codec, Lifetime, Outcome, SharedLevel
from shared.clock import Clock, Deadline
from shared.errors import transient
from shared.http import call_context
from shared.identity import Identity
from shared.powerbi import Bearer, Dataset, EmbedToken, Item, PowerBIClient, TokenRequest
from shared.settings import Settings

logger = logging.getLogger(__name__)

Kind = Literal["report", "dashboard", "tile", "reports", "create"]
# Extra life asked of the Entra token beyond the embed token's minimum, so that the
# embed token it makes can still have the minimum after the GenerateToken round trip.
ENTRA_MARGIN_SECONDS = 120
# When minting fails for a transient fault, a cached token with at least this left is handed out instead.
STALE_MIN_SECONDS = 120


@dataclass(frozen=True, slots=True)
class TokenKey:
    """The embed-token cache key: canonical, so one set of items is one token whatever the request's order,
    and with the identity only when one of the token's datasets requires it (it is then the one sent). The
    profile is part of it: a token minted as one profile is never handed out for another."""

    kind: Kind
    workspace_id: str
    ids: tuple[str, ...]  # sorted for several reports
    access_level: str
    identity: Identity | None
    profile_id: str | None = None  # the service principal profile it is minted as (None: the app itself)

    def text(self) -> str:
        identity = dataclasses.asdict(self.identity) if self.identity else None
        parts = [self.kind, self.workspace_id, list(self.ids), self.access_level, identity, self.profile_id]
        return json.dumps(parts, separators=(",", ":"), sort_keys=True)


@dataclass(frozen=True, slots=True)
class Plan:
    """What one token is for: its cache key and the GenerateToken it takes on a miss."""

    key: TokenKey
    request: TokenRequest


@dataclass(frozen=True, slots=True)
class Embed:
    kind: Kind
    items: tuple[Item, ...]
    token: EmbedToken
    dataset: Dataset | None = None  # the dataset a "create" token is for

    def to_json(self) -> dict[str, Any]:
        token = {
            "accessToken": self.token.token,
            "tokenType": "Embed",
            "tokenId": self.token.token_id,
            "expiration": self.token.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        if self.kind == "reports":
            items = [{"id": i.id, "workspaceId": i.workspace_id, "embedUrl": i.embed_url} for i in self.items]
            return {"type": "reports", "items": items, **token}
        if self.dataset is not None:
            dataset = self.dataset
            return {
                "type": "create",
                "id": dataset.id,
                "datasetId": dataset.id,
                "workspaceId": dataset.workspace_id,
                "embedUrl": dataset.create_embed_url,
                **token,
            }
        item = self.items[0]
        tile = {"dashboardId": item.dashboard_id} if item.dashboard_id else {}
        return {
            "type": item.kind,
            "id": item.id,
            **tile,
            "workspaceId": item.workspace_id,
            "embedUrl": item.embed_url,
            **token,
        }


def _embed_to_json(value: Embed) -> dict[str, Any]:
    return {
        "kind": value.kind,
        "items": [i.to_json() for i in value.items],
        "token": value.token.to_json(),
        "dataset": value.dataset.to_json() if value.dataset else None,
    }


def _embed_from_json(data: dict[str, Any]) -> Embed:
    return Embed(
        data["kind"],
        tuple(Item.from_json(i) for i in data["items"]),
        EmbedToken.from_json(data["token"]),
        Dataset.from_json(data["dataset"]) if data["dataset"] else None,
    )


# How an embed goes to the shared cache (Redis) and back.
EMBED_CODEC = Codec(_embed_to_json, _embed_from_json)


class EmbedTokens:
    """Embed tokens by key: from the cache, else minted within the budget; re-minted ahead in the background."""

    def __init__(
        self,
        settings: Settings,
        powerbi: PowerBIClient,
        clock: Clock,
        shared: SharedLevel | None,
        background: Background | None,
        budget: Budget,
    ) -> None:
        self.powerbi = powerbi
        self.clock = clock
        self.budget = budget
        self._min_seconds = settings.policy.min_token_minutes * 60
        self._ahead_seconds = settings.refresh.ahead_minutes * 60
        self.cache: Cache[TokenKey, Embed] = Cache(
            "embed",
            settings.caches.max_tokens,
            self._lifetime,
            clock=clock,
            shared=shared,
            codec=EMBED_CODEC,
            background=background,
            transient=transient,
        )

    def get(
        self, plan: Plan, bearer: Bearer, principal: str | None, remaining: Callable[[], float]
    ) -> tuple[Embed, Outcome]:
        """The token for ``plan`` and how it was found; ``principal``: the signed-in user, for their budget."""
        return self.cache.get_or_load(
            plan.key,
            lambda: self._mint(bearer, plan, principal),
            remaining,
            refresh=lambda: self._mint_ahead(bearer, plan),
        )

    def _lifetime(self, embed: Embed) -> Lifetime:
        """Handed out while the minimum life is left, re-minted ahead within the refresh window before that,
        kept for a failing GenerateToken while ``STALE_MIN_SECONDS`` are left."""
        expires = embed.token.expires_at
        ahead = expires - self._min_seconds - self._ahead_seconds if self._ahead_seconds else None
        return Lifetime(expires - self._min_seconds, ahead, expires - STALE_MIN_SECONDS)

    def _mint(self, bearer: Bearer, plan: Plan, principal: str | None) -> Embed:
        """A new token for a request, within the budget (over it: 429, and no upstream call)."""
        self.budget.take(principal)
        powerbi = self.powerbi.for_profile(bearer.profile_id)
        token = bearer.call(lambda access: powerbi.generate_token(access, plan.request))
        telemetry.token_minted(plan.key.kind, plan.request.api, bool(plan.request.identities), "miss")
        return Embed(plan.key.kind, plan.request.items, token, plan.request.create_on)

    def _mint_ahead(self, bearer: Bearer, plan: Plan) -> Embed:
        """The background re-mint of a key still cached: counted in the budget, never refused; the Entra
        token behind it renewed first when it could not make a token that outlives the refresh window."""
        with call_context(Deadline.after(self.clock, BACKGROUND_SECONDS)) as context:
            self.budget.take(background=True)
            longer = bearer.fork(self._min_seconds + self._ahead_seconds + ENTRA_MARGIN_SECONDS)
            powerbi = self.powerbi.for_profile(longer.profile_id)
            token = longer.call(lambda access: powerbi.generate_token(access, plan.request))
            telemetry.token_minted(plan.key.kind, plan.request.api, bool(plan.request.identities), "refresh")
            logger.info(
                "refreshed ahead %s %s workspace=%s upstream_calls=%d upstream_ms=%.0f token_id=%s",
                plan.key.kind,
                ",".join(plan.key.ids),
                plan.key.workspace_id,
                context.upstream_calls,
                context.upstream_seconds * 1000,
                token.token_id,
            )
        return Embed(plan.key.kind, plan.request.items, token, plan.request.create_on)
