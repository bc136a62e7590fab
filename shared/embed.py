"""The embed service: who may have a token (policy), and tokens reused while they last (cache).

Policy is checked before any upstream call, so a denied request costs Power BI
nothing. Embed tokens are cached per (type, workspace, item, access level,
identity) and handed out again while at least POWERBI_MIN_TOKEN_MINUTES remain;
the item's embed URL is cached too. Concurrent requests for the same key share one
upstream call: the Python worker runs synchronous handlers on a thread pool.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import requests

from shared.clock import SYSTEM_CLOCK, Clock, Deadline
from shared.entra import EntraTokenProvider
from shared.errors import InvalidRequest, NotAllowed, UpstreamTimeout
from shared.http import HttpClient, call_context
from shared.powerbi import EmbedToken, Item, PowerBIClient
from shared.settings import Settings, parse_guid

logger = logging.getLogger(__name__)

Kind = Literal["report", "dashboard"]
# Extra life asked of the Entra token beyond the embed token's minimum, so that the
# embed token it makes can still have the minimum after the GenerateToken round trip.
ENTRA_MARGIN_SECONDS = 120
# Embed URLs do not change, but a report can be rebound to another dataset.
ITEM_TTL_SECONDS = 3600

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Embed:
    item: Item
    token: EmbedToken

    def to_json(self) -> dict[str, Any]:
        return {
            "type": self.item.kind,
            "id": self.item.id,
            "workspaceId": self.item.workspace_id,
            "embedUrl": self.item.embed_url,
            "accessToken": self.token.token,
            "tokenType": "Embed",
            "tokenId": self.token.token_id,
            "expiration": self.token.expiration.strftime("%Y-%m-%dT%H:%M:%SZ"),
        }


@dataclass(frozen=True)
class CacheKey:
    kind: Kind
    workspace_id: str
    item_id: str
    access_level: str = "View"
    identity: str | None = None


class SingleFlight(Generic[K, V]):
    """Concurrent calls for one key run the work once; the others wait for its result."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._flights: dict[K, Future[V]] = {}

    def run(self, key: K, work: Callable[[], V], timeout: Callable[[], float]) -> tuple[V, bool]:
        """(the result, whether this call did the work)."""
        with self._lock:
            flight = self._flights.get(key)
            leader = flight is None
            if flight is None:
                flight = self._flights[key] = Future()
        if not leader:
            try:
                return flight.result(timeout=max(0.0, timeout())), False
            except FutureTimeout:
                raise UpstreamTimeout(
                    "Power BI did not answer in time.", cause="waited too long for a concurrent request"
                ) from None
        try:
            flight.set_result(work())
        except BaseException as exc:  # noqa: BLE001 - handed to the waiters, then re-raised below
            # Shared with the callers waiting now, not kept: the next request tries again.
            flight.set_exception(exc)
        finally:
            with self._lock:
                del self._flights[key]
        return flight.result(), True


class EmbedService:
    def __init__(
        self, settings: Settings, tokens: EntraTokenProvider, powerbi: PowerBIClient, clock: Clock = SYSTEM_CLOCK
    ) -> None:
        self.settings = settings
        self.tokens = tokens
        self.powerbi = powerbi
        self.clock = clock
        self._min_seconds = settings.min_token_minutes * 60
        self._embeds: dict[CacheKey, Embed] = {}
        self._items: dict[tuple[str, str, str], tuple[Item, float]] = {}
        self._flights: SingleFlight[CacheKey, Embed] = SingleFlight()

    @classmethod
    def create(
        cls, settings: Settings, clock: Clock = SYSTEM_CLOCK, session: requests.Session | None = None
    ) -> EmbedService:
        """The service with its collaborators: one HTTP session and one MSAL application."""
        http = HttpClient(session, clock)
        return cls(
            settings,
            EntraTokenProvider(settings, http, clock),
            PowerBIClient(settings.api_url, http, settings.token_lifetime_minutes, settings.profile_id),
            clock,
        )

    def embed(self, kind: Kind, item_id: str, workspace_id: str | None) -> Embed:
        key = self._authorize(kind, item_id, workspace_id)
        with call_context(Deadline.after(self.clock, self.settings.deadline_seconds)) as context:
            embed = self._fresh(key)
            outcome = "hit"
            if embed is None:
                embed, leader = self._flights.run(key, lambda: self._issue(key), context.deadline.remaining)
                outcome = "miss" if leader else "shared"
            logger.info(
                "embed %s %s workspace=%s cache=%s upstream_calls=%d upstream_ms=%.0f request_ids=%s token_id=%s",
                kind,
                key.item_id,
                key.workspace_id,
                outcome,
                context.upstream_calls,
                context.upstream_seconds * 1000,
                ",".join(context.request_ids) or "-",
                embed.token.token_id,
            )
        return embed

    def _authorize(self, kind: Kind, item_id: str, workspace_id: str | None) -> CacheKey:
        """Deny before any upstream call: bad ids, workspaces and items not allowed."""
        s = self.settings
        item = parse_guid(item_id)
        if item is None:
            raise InvalidRequest(f"The {kind} id must be a GUID.")
        if workspace_id is None:
            if s.workspace_id is None:
                raise InvalidRequest("workspaceId is required: no default workspace is configured.")
            workspace = s.workspace_id
        else:
            parsed = parse_guid(workspace_id)
            if parsed is None:
                raise InvalidRequest("workspaceId must be a GUID.")
            workspace = parsed
        if workspace not in s.allowed_workspaces:
            raise NotAllowed(f"Workspace {workspace} is not allowed.")
        allowed_items = s.allowed_reports if kind == "report" else s.allowed_dashboards
        if allowed_items is not None and item not in allowed_items:
            raise NotAllowed(f"The {kind} {item} is not allowed.")
        return CacheKey(kind, workspace, item)

    def _fresh(self, key: CacheKey) -> Embed | None:
        embed = self._embeds.get(key)
        if embed and embed.token.expires_at - self.clock.now() >= self._min_seconds:
            return embed
        return None

    def _issue(self, key: CacheKey) -> Embed:
        # A flight that ended just before this one started may have filled the cache.
        embed = self._fresh(key)
        if embed:
            return embed
        access = self.tokens.token(self._min_seconds + ENTRA_MARGIN_SECONDS)
        item_key = (key.kind, key.workspace_id, key.item_id)
        item, fetched_at = self._items.get(item_key, (None, 0.0))
        if item is None or self.clock.now() - fetched_at > ITEM_TTL_SECONDS:
            item = self.powerbi.get_item(access.value, key.kind, key.workspace_id, key.item_id)
            self._items[item_key] = (item, self.clock.now())
        embed = Embed(item, self.powerbi.generate_token(access.value, item))
        self._embeds[key] = embed
        return embed
