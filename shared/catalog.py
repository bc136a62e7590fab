"""The workspace catalog: what each allowed workspace holds, read with Power BI's list calls.

Per workspace the function reads its reports, dashboards and datasets with one list call each
(``GET /groups/{id}/reports``, ``/dashboards``, ``/datasets``) instead of one GET per item, a
dashboard's tiles with ``/dashboards/{id}/tiles`` when a dashboard or tile is asked for, and a
paginated report's data sources once. Each answer (a ``Listing``) is kept for
POWERBI_CATALOG_TTL_SECONDS. Embed URLs, a report's dataset, paginated or not, and the datasets'
row-level-security flags all come from it.

An id that is not in a listing is a 404 without an upstream call; it re-reads the listing at most
once per POWERBI_CATALOG_REFRESH_SECONDS (a report published a minute ago works, a flood of random
ids costs nothing more). Concurrent reads of one listing share one call. A listing that cannot be
read raises Power BI's answer and is not kept, so it is never cached as empty.

Each listing is read, and kept, as the request's service principal profile (``Bearer.profile_id``; the
app itself when none): the profile is part of the key, so what one profile reads is never served to another.

A report's dataset may live in another workspace (``datasetWorkspaceId``): that workspace's
datasets list is read (only its datasets, one call, cached alike). A paginated report's semantic
model is looked for in the report's workspace, else read by id (Datasets - Get Dataset).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from shared.background import Background
from shared.cache import BACKGROUND_SECONDS, Cache, Codec, Lifetime, SharedLevel
from shared.clock import SYSTEM_CLOCK, Clock, Deadline
from shared.errors import NotFound, transient
from shared.http import call_context, current_context
from shared.powerbi import Bearer, Dataset, Item, PowerBIClient

logger = logging.getLogger(__name__)

ListingKind = Literal["reports", "dashboards", "datasets", "tiles", "datasources", "dataset"]
# Listings held in process: a few per workspace, one per dashboard asked for, one per paginated report.
# Only ids found in Power BI's own answers get an entry, so random ids cannot fill it.
MAX_LISTINGS = 4096
# For the operator (error details on): why an id the caller sent may be missing from the catalog.
_NOT_LISTED = "(Power BI does not list it to the signed-in identity: deleted, or not shared with it.)"


@dataclass(frozen=True, slots=True)
class ListingKey:
    """Which list call: (kind, workspace, the dashboard or report it belongs to), and the service principal
    profile it is made as ("" for the app itself): what one profile may see is never served to another."""

    kind: ListingKind
    workspace_id: str
    parent: str = ""
    profile: str = ""

    def text(self) -> str:
        return f"{self.kind}:{self.workspace_id}:{self.parent}:{self.profile}"


@dataclass(frozen=True, slots=True)
class Listing:
    """One list call's answer, as far as embedding needs it, and when it was read (epoch seconds)."""

    read_at: float
    items: tuple[Item, ...] = ()
    datasets: tuple[Dataset, ...] = ()
    models: tuple[str, ...] = ()  # a paginated report's semantic models (dataset ids)
    _by_id: dict[str, Item | Dataset] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_id: dict[str, Item | Dataset] = {i.id: i for i in self.items}
        by_id.update({d.id: d for d in self.datasets})
        object.__setattr__(self, "_by_id", by_id)

    def find(self, item_id: str) -> Item | Dataset | None:
        return self._by_id.get(item_id)

    def to_json(self) -> dict[str, Any]:
        return {
            "readAt": self.read_at,
            "items": [i.to_json() for i in self.items],
            "datasets": [d.to_json() for d in self.datasets],
            "models": list(self.models),
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Listing:
        return cls(
            float(data["readAt"]),
            tuple(Item.from_json(i) for i in data["items"]),
            tuple(Dataset.from_json(d) for d in data["datasets"]),
            tuple(str(m) for m in data["models"]),
        )


def _key(bearer: Bearer, kind: ListingKind, workspace_id: str, parent: str = "") -> ListingKey:
    return ListingKey(kind, workspace_id, parent, bearer.profile_id or "")


class Catalog:
    """The listings of the allowed workspaces, each kept POWERBI_CATALOG_TTL_SECONDS; with refresh ahead, one
    asked in the last part of its life is re-read in the background; one that cannot be re-read for a
    transient fault keeps serving for at most POWERBI_CATALOG_STALE_SECONDS more."""

    def __init__(
        self,
        powerbi: PowerBIClient,
        ttl_seconds: float,
        refresh_seconds: float,
        *,
        clock: Clock = SYSTEM_CLOCK,
        shared: SharedLevel | None = None,
        background: Background | None = None,
        ahead_seconds: float = 0.0,
        stale_seconds: float = 0.0,
    ) -> None:
        self.powerbi = powerbi
        self.refresh_seconds = refresh_seconds
        self.clock = clock
        # Re-read ahead in the last part of a listing's life, at most its second half.
        ahead = min(ahead_seconds, ttl_seconds / 2)

        def lifetime(listing: Listing) -> Lifetime:
            fresh = listing.read_at + ttl_seconds
            return Lifetime(fresh, fresh - ahead if ahead > 0 else None, fresh + stale_seconds)

        self._listings: Cache[ListingKey, Listing] = Cache(
            "catalog",
            MAX_LISTINGS,
            lifetime,
            clock=clock,
            shared=shared,
            codec=Codec(Listing.to_json, Listing.from_json),
            background=background,
            transient=transient,
        )

    def __len__(self) -> int:
        """Workspace listings kept (for the cache-entries gauge)."""
        return len(self._listings)

    # -- what the embed flow asks ----------------------------------------------------------------------------

    def report(self, bearer: Bearer, workspace_id: str, report_id: str) -> Item:
        return self._item(bearer, _key(bearer, "reports", workspace_id), report_id, "report")

    def dashboard(self, bearer: Bearer, workspace_id: str, dashboard_id: str) -> Item:
        """The dashboard, with the datasets behind its tiles."""
        dashboard = self._item(bearer, _key(bearer, "dashboards", workspace_id), dashboard_id, "dashboard")
        tiles = self._listing(bearer, _key(bearer, "tiles", workspace_id, dashboard_id))
        datasets = tuple(sorted({d for tile in tiles.items for d in tile.datasets}))
        return Item("dashboard", dashboard.id, workspace_id, dashboard.embed_url, datasets)

    def tile(self, bearer: Bearer, workspace_id: str, dashboard_id: str, tile_id: str) -> Item:
        self._item(bearer, _key(bearer, "dashboards", workspace_id), dashboard_id, "dashboard")
        return self._item(bearer, _key(bearer, "tiles", workspace_id, dashboard_id), tile_id, "tile")

    def dataset(self, bearer: Bearer, workspace_id: str, dataset_id: str) -> Dataset:
        found = self._find(bearer, _key(bearer, "datasets", workspace_id), dataset_id)
        if not isinstance(found, Dataset):
            raise NotFound(
                f"There is no dataset {dataset_id} in workspace {workspace_id}.",
                cause=f"dataset {dataset_id} not in the catalog of workspace {workspace_id}",
                hint=_NOT_LISTED,
            )
        return found

    def semantic_models(self, bearer: Bearer, report: Item) -> tuple[Dataset, ...]:
        """The Power BI semantic models a paginated report queries (none for a SQL source, say)."""
        if not report.paginated:
            return ()
        sources = self._listing(bearer, _key(bearer, "datasources", report.workspace_id, report.id))
        return tuple(self._model(bearer, report.workspace_id, model) for model in sources.models)

    def _model(self, bearer: Bearer, workspace_id: str, dataset_id: str) -> Dataset:
        here = self._listing(bearer, _key(bearer, "datasets", workspace_id)).find(dataset_id)
        if isinstance(here, Dataset):
            return here
        # In another workspace: the data source does not say which, so read the one dataset by id.
        elsewhere = self._listing(bearer, _key(bearer, "dataset", "", dataset_id)).datasets
        return elsewhere[0]

    # -- listings --------------------------------------------------------------------------------------------

    def _item(self, bearer: Bearer, key: ListingKey, item_id: str, noun: str) -> Item:
        found = self._find(bearer, key, item_id)
        if not isinstance(found, Item):
            raise NotFound(
                f"There is no {noun} {item_id} in workspace {key.workspace_id}.",
                cause=f"{noun} {item_id} not in the catalog of workspace {key.workspace_id}",
                hint=_NOT_LISTED,
            )
        return found

    def _find(self, bearer: Bearer, key: ListingKey, item_id: str) -> Item | Dataset | None:
        """The item from the listing; an unknown id re-reads it only when the last read is old enough."""
        listing = self._listing(bearer, key)
        found = listing.find(item_id)
        if found is None and self.clock.now() - listing.read_at >= self.refresh_seconds:
            listing = self._listing(bearer, key, newer_than=listing.read_at)
            found = listing.find(item_id)
        return found

    def _listing(self, bearer: Bearer, key: ListingKey, newer_than: float | None = None) -> Listing:
        """The listing, read once for concurrent callers; ``newer_than``: read after that time (epoch seconds)."""
        accept = None if newer_than is None else (lambda listing: listing.read_at > newer_than)
        deadline = current_context(self.clock).deadline
        listing, _ = self._listings.get_or_load(
            key,
            lambda: self._read(bearer, key),
            deadline.remaining,
            accept=accept,
            refresh=lambda: self._read_ahead(bearer.fork(), key),
        )
        return listing

    def _read_ahead(self, bearer: Bearer, key: ListingKey) -> Listing:
        """The background re-read, with a deadline of its own."""
        with call_context(Deadline.after(self.clock, BACKGROUND_SECONDS)):
            return self._read(bearer, key)

    def _read(self, bearer: Bearer, key: ListingKey) -> Listing:
        pbi, ws, now = self.powerbi.for_profile(key.profile or None), key.workspace_id, self.clock.now()
        readers: dict[str, Callable[[str], Listing]] = {
            "reports": lambda token: Listing(now, items=pbi.list_reports(token, ws)),
            "dashboards": lambda token: Listing(now, items=pbi.list_dashboards(token, ws)),
            "tiles": lambda token: Listing(now, items=pbi.list_tiles(token, ws, key.parent)),
            "datasets": lambda token: Listing(now, datasets=pbi.list_datasets(token, ws)),
            "dataset": lambda token: Listing(now, datasets=(pbi.find_dataset(token, key.parent),)),
            "datasources": lambda token: Listing(now, models=pbi.semantic_models(token, ws, key.parent)),
        }
        listing = bearer.call(readers[key.kind])
        logger.debug("catalog %s read: %d entries", key.text(), len(listing.items) + len(listing.datasets))
        return listing
