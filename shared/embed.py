"""The embed service: who may have a token (policy), and tokens reused while they last (cache).

Policy is checked before any upstream call, so a denied request costs Power BI
nothing. Embed tokens are cached per (type, workspace, items, access level,
identity) and handed out again while at least POWERBI_MIN_TOKEN_MINUTES remain;
items (embed URLs, datasets) and datasets' row-level-security flags are cached too.
Concurrent requests for the same key share one upstream call: the Python worker
runs synchronous handlers on a thread pool.

Row-level security: an effective identity goes exactly to the datasets that require
one (Power BI refuses it for the others), and a dataset that requires one while the
function has none to give is a configuration error, not a Power BI error.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Sequence
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import Any, Generic, Literal, TypeVar

import requests

from shared.clock import SYSTEM_CLOCK, Clock, Deadline
from shared.entra import EntraTokenProvider
from shared.errors import ConfigurationError, InvalidRequest, NotAllowed, UpstreamTimeout
from shared.http import HttpClient, call_context
from shared.identity import Identity
from shared.powerbi import Dataset, EmbedToken, Item, PowerBIClient, TokenRequest
from shared.settings import Settings, parse_guid

logger = logging.getLogger(__name__)

Kind = Literal["report", "dashboard", "tile", "reports", "create"]
MAX_REPORTS = 50  # Power BI's limit for one V2 token
# Extra life asked of the Entra token beyond the embed token's minimum, so that the
# embed token it makes can still have the minimum after the GenerateToken round trip.
ENTRA_MARGIN_SECONDS = 120
# Embed URLs do not change, but a report can be rebound to another dataset, and a
# dataset's row-level-security roles can change.
ITEM_TTL_SECONDS = 3600

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class EmbedRequest:
    """What a caller may have, once policy has allowed it; also the embed-token cache key."""

    kind: Kind
    workspace_id: str
    ids: tuple[str, ...]  # report ids; (dashboard,); (dashboard, tile); (dataset,) for create
    access_level: str = "View"
    identity: Identity | None = None


@dataclass(frozen=True)
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
        self._embeds: dict[EmbedRequest, Embed] = {}
        self._metadata: dict[tuple[str, ...], tuple[Any, float]] = {}
        self._flights: SingleFlight[EmbedRequest, Embed] = SingleFlight()

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

    def embed(
        self,
        kind: Kind,
        ids: str | Sequence[str],
        workspace_id: str | None = None,
        access_level: str | None = None,
        identity: Identity | None = None,
    ) -> Embed:
        raw_ids = (ids,) if isinstance(ids, str) else tuple(ids)
        request = self._authorize(kind, raw_ids, workspace_id, access_level, identity)
        with call_context(Deadline.after(self.clock, self.settings.deadline_seconds)) as context:
            embed = self._fresh(request)
            outcome = "hit"
            if embed is None:
                embed, leader = self._flights.run(request, lambda: self._issue(request), context.deadline.remaining)
                outcome = "miss" if leader else "shared"
            logger.info(
                "embed %s %s workspace=%s access=%s rls=%s cache=%s upstream_calls=%d upstream_ms=%.0f "
                "request_ids=%s token_id=%s",
                kind,
                ",".join(request.ids),
                request.workspace_id,
                request.access_level,
                "yes" if identity else "no",
                outcome,
                context.upstream_calls,
                context.upstream_seconds * 1000,
                ",".join(context.request_ids) or "-",
                embed.token.token_id,
            )
        return embed

    def _authorize(
        self,
        kind: Kind,
        raw_ids: tuple[str, ...],
        workspace_id: str | None,
        access_level: str | None,
        identity: Identity | None,
    ) -> EmbedRequest:
        """Deny before any upstream call: bad ids and values, workspaces, items and access not allowed."""
        s = self.settings
        names = {"tile": ("dashboard", "tile"), "create": ("dataset",)}.get(kind, (kind.removesuffix("s"),))
        ids: list[str] = []
        for position, raw in enumerate(raw_ids):
            parsed = parse_guid(raw)
            if parsed is None:
                raise InvalidRequest(f"The {names[min(position, len(names) - 1)]} id must be a GUID.")
            if kind != "reports" or parsed not in ids:  # the same report twice is one report
                ids.append(parsed)
        if kind == "reports" and not 1 <= len(ids) <= MAX_REPORTS:
            raise InvalidRequest(f"ids must list from 1 to {MAX_REPORTS} report ids, separated by commas.")
        level = (access_level or "View").capitalize()
        if level not in ("View", "Edit"):
            raise InvalidRequest("accessLevel must be View or Edit.")
        if level == "Edit" and kind not in ("report", "reports"):
            raise InvalidRequest("Only reports can be edited: accessLevel=Edit needs a report.")
        workspace = s.workspace_id if workspace_id is None else parse_guid(workspace_id)
        if workspace is None:
            raise InvalidRequest("workspaceId is required." if workspace_id is None else "workspaceId must be a GUID.")
        if workspace not in s.allowed_workspaces:
            raise NotAllowed(f"Workspace {workspace} is not allowed.")
        # Reports answer to the report allow-list; a dashboard and its tiles to the dashboard's; a
        # dataset to be reported on (create) only to its workspace's.
        allowed = s.allowed_reports if kind in ("report", "reports") else s.allowed_dashboards
        governed = [] if kind == "create" else ids if kind in ("report", "reports") else ids[:1]
        for item in governed:
            if allowed is not None and item not in allowed:
                raise NotAllowed(f"The {names[0]} {item} is not allowed.")
        if (level == "Edit" or kind == "create") and not s.allow_edit:
            raise NotAllowed("Editing and creating reports is not allowed (POWERBI_ALLOW_EDIT is not true).")
        return EmbedRequest(kind, workspace, tuple(ids), level, identity)

    def _fresh(self, request: EmbedRequest) -> Embed | None:
        embed = self._embeds.get(request)
        if embed and embed.token.expires_at - self.clock.now() >= self._min_seconds:
            return embed
        return None

    def _issue(self, request: EmbedRequest) -> Embed:
        # A flight that ended just before this one started may have filled the cache.
        embed = self._fresh(request)
        if embed:
            return embed
        access = self.tokens.token(self._min_seconds + ENTRA_MARGIN_SECONDS).value
        ws, ids = request.workspace_id, request.ids
        dataset: Dataset | None = None
        if request.kind == "create":
            dataset = self._dataset(access, ws, ids[0])
            items: tuple[Item, ...] = ()
            behind: tuple[tuple[str, str], ...] = ((ws, dataset.id),)
        else:
            if request.kind == "tile":
                items = (self._item(access, "tile", ws, ids),)
            else:
                kind: Kind = "dashboard" if request.kind == "dashboard" else "report"
                items = tuple(self._item(access, kind, ws, (item_id,)) for item_id in ids)
            behind = tuple(sorted({d for item in items for d in item.datasets}))
        token_request = TokenRequest(
            items, request.access_level == "Edit", dataset, self._identities(access, behind, request.identity)
        )
        embed = Embed(request.kind, items, self.powerbi.generate_token(access, token_request), dataset)
        self._embeds[request] = embed
        return embed

    def _identities(
        self, access: str, datasets: tuple[tuple[str, str], ...], identity: Identity | None
    ) -> tuple[tuple[str, tuple[str, ...], str | None, tuple[str, ...]], ...]:
        """The effective identity, for exactly the datasets that require one."""
        needing = [self._dataset(access, ws, ds) for ws, ds in datasets]
        needing = [d for d in needing if d.identity_required]
        if not needing:
            return ()
        names = ", ".join(d.id for d in needing)
        if identity is None:
            raise ConfigurationError(
                f"Dataset {names} uses row-level security and needs an effective identity: set "
                "POWERBI_RLS_USERNAME_SOURCE=principal (with App Service Authentication) so each user's "
                "identity is sent."
            )
        if any(d.roles_required for d in needing) and not identity.roles:
            raise ConfigurationError(f"Dataset {names} requires row-level-security roles: set POWERBI_RLS_ROLES.")
        return ((identity.username, identity.roles, identity.custom_data, tuple(d.id for d in needing)),)

    def _item(self, access: str, kind: Kind, workspace_id: str, ids: tuple[str, ...]) -> Item:
        def fetch() -> Item:
            if kind == "tile":
                return self.powerbi.get_tile(access, workspace_id, ids[0], ids[1])
            if kind == "dashboard":
                return self.powerbi.get_dashboard(access, workspace_id, ids[0])
            return self.powerbi.get_report(access, workspace_id, ids[0])

        return self._cached(("item", kind, workspace_id, *ids), fetch)

    def _dataset(self, access: str, workspace_id: str, dataset_id: str) -> Dataset:
        return self._cached(
            ("dataset", workspace_id, dataset_id), lambda: self.powerbi.get_dataset(access, workspace_id, dataset_id)
        )

    def _cached(self, key: tuple[str, ...], fetch: Callable[[], V]) -> V:
        """Metadata (items, datasets) kept for ITEM_TTL_SECONDS."""
        value, fetched_at = self._metadata.get(key, (None, 0.0))
        if value is None or self.clock.now() - fetched_at > ITEM_TTL_SECONDS:
            value = fetch()
            self._metadata[key] = (value, self.clock.now())
        return value  # type: ignore[no-any-return]
