"""The Power BI REST calls the function makes, and what their failures mean.

Reads are the list calls of a workspace (reports, dashboards, datasets), a dashboard's tiles and a
paginated report's data sources. Bodies follow Microsoft's published schemas: reports use the V2
multi-resource GenerateToken (``POST /v1.0/myorg/GenerateToken`` with the reports and their datasets,
a paginated report's semantic models with ``xmlaPermissions: ReadOnly``), dashboards and tiles the V1
GenerateToken in their group with ``accessLevel: View``.

``Bearer`` holds the Entra token of one request: when Power BI answers 401 ``TokenExpired``, or any
401 to a token MSAL served from its cache (it may have been revoked), it signs in afresh and repeats
the call once.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol, TypeVar
from urllib.parse import urlsplit

import requests

from shared.clock import Clock
from shared.entra import AccessToken
from shared.errors import EmbedError, NotFound, PowerBIRefused, Throttled, Upstream
from shared.http import HttpClient, retry_after_seconds
from shared.redact import register_secret
from shared.settings import parse_guid

logger = logging.getLogger(__name__)

T = TypeVar("T")

# A semantic model as a paginated report's data source: the database is this, then the dataset id.
MODEL_DATABASE_PREFIX = "sobe_wowvirtualserver-"
# When Power BI throttles without saying for how long.
DEFAULT_RETRY_AFTER_SECONDS = 30
# Answers that say "later", not "no": throttling (429) and server errors (answered 503 unavailable).
TRANSIENT_STATUSES = frozenset({429, 500, 502, 503, 504})

# What a person can do about Power BI's refusals on this path.
_REFUSAL_HINTS = {
    401: "the signed-in identity may not use this workspace: make it a member (Member or Admin) "
    "and, for a service principal, allow service principals in the Power BI tenant settings",
    403: "Power BI forbids this call: check the identity's workspace role, the app's Power BI "
    "permissions, and whether the workspace is on a capacity (trial tokens run out)",
}


@dataclass(frozen=True, slots=True)
class Item:
    """A report, dashboard or tile as far as embedding needs it."""

    kind: str
    id: str
    workspace_id: str
    embed_url: str
    # The datasets behind it, as (workspace id, dataset id): a report's own (none for a paginated
    # report), the tiles' for a dashboard, a tile's own.
    datasets: tuple[tuple[str, str], ...] = ()
    dashboard_id: str | None = None  # a tile's dashboard
    paginated: bool = False  # a paginated report: its semantic models are in its data sources

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "id": self.id,
            "workspaceId": self.workspace_id,
            "embedUrl": self.embed_url,
            "datasets": [list(d) for d in self.datasets],
            "dashboardId": self.dashboard_id,
            "paginated": self.paginated,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Item:
        return cls(
            str(data["kind"]),
            str(data["id"]),
            str(data["workspaceId"]),
            str(data["embedUrl"]),
            tuple((str(ws), str(ds)) for ws, ds in data["datasets"]),
            data["dashboardId"],
            bool(data["paginated"]),
        )


@dataclass(frozen=True, slots=True)
class Dataset:
    id: str
    workspace_id: str
    identity_required: bool
    roles_required: bool
    create_embed_url: str

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "workspaceId": self.workspace_id,
            "identityRequired": self.identity_required,
            "rolesRequired": self.roles_required,
            "createEmbedUrl": self.create_embed_url,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Dataset:
        return cls(
            str(data["id"]),
            str(data["workspaceId"]),
            bool(data["identityRequired"]),
            bool(data["rolesRequired"]),
            str(data["createEmbedUrl"]),
        )


@dataclass(frozen=True, slots=True)
class EffectiveIdentity:
    """Row-level security for one token: who, in which roles, for which datasets (and paginated reports)."""

    username: str
    roles: tuple[str, ...] = ()
    custom_data: str | None = None
    datasets: tuple[str, ...] = ()
    # Paginated reports on these datasets: Microsoft's paginated-report example names them here too.
    reports: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class TokenRequest:
    """What one GenerateToken call is for: items to view or edit, or a dataset to create a report on."""

    items: tuple[Item, ...] = ()
    edit: bool = False
    create_on: Dataset | None = None
    identities: tuple[EffectiveIdentity, ...] = ()
    # Semantic models that paginated reports query: granted with xmlaPermissions ReadOnly.
    read_only_xmla: tuple[str, ...] = ()

    @property
    def api(self) -> str:
        """V1 (the in-group dashboard and tile calls) or V2 (reports, datasets, report creation)."""
        return "V1" if self.items and self.items[0].kind in ("dashboard", "tile") else "V2"


@dataclass(frozen=True, slots=True)
class EmbedToken:
    token: str = field(repr=False)
    token_id: str
    expiration: datetime

    @property
    def expires_at(self) -> float:
        return self.expiration.timestamp()

    def to_json(self) -> dict[str, Any]:
        return {"token": self.token, "tokenId": self.token_id, "expiration": self.expiration.isoformat()}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> EmbedToken:
        """A token read back (from the shared cache): kept out of every log line, like one just minted."""
        token = str(data["token"])
        register_secret(token)
        return cls(token, str(data["tokenId"]), datetime.fromisoformat(data["expiration"]))


class TokenSource(Protocol):
    def token(self, min_seconds: float, *, fresh: bool = False) -> AccessToken: ...


class Bearer:
    """Who calls Power BI for one request: the Entra token, fetched on first use (a cache hit needs none)
    and replaced once when Power BI rejects it, and the service principal profile the calls act as (None:
    the app itself). One Entra token serves every profile; the profile travels in each call's header."""

    def __init__(self, tokens: TokenSource, min_seconds: float, profile_id: str | None = None) -> None:
        self._tokens = tokens
        self._min_seconds = min_seconds
        self.profile_id = profile_id
        self._token: AccessToken | None = None
        self._renewed = False

    def fork(self, min_seconds: float | None = None) -> Bearer:
        """A Bearer of its own, for work off the request (a background refresh), with the same or a longer
        minimum life: a token too short for it is renewed when it is first used."""
        # The same profile: work done for a customer is done as that customer's profile, never as another.
        return Bearer(self._tokens, self._min_seconds if min_seconds is None else min_seconds, self.profile_id)

    def call(self, work: Callable[[str], T]) -> T:
        token = self._token = self._token or self._tokens.token(self._min_seconds)
        try:
            return work(token.value)
        except PowerBIRefused as exc:
            if self._renewed or not _rejected(exc, token):
                raise
            # Expired early or revoked (a password change, a disabled account): sign in again, once.
            logger.info("Power BI rejected the Entra token (%s): signing in again", exc.cause)
            self._renewed = True
            self._token = self._tokens.token(self._min_seconds, fresh=True)
            return work(self._token.value)


def _rejected(exc: PowerBIRefused, token: AccessToken) -> bool:
    upstream = exc.upstream
    return upstream is not None and upstream.status == 401 and (upstream.code == "TokenExpired" or token.from_cache)


class PowerBIClient:
    def __init__(
        self, api_url: str, http: HttpClient, lifetime_minutes: int | None = None, profile_id: str | None = None
    ) -> None:
        self.api_url = api_url
        self.base = f"{api_url}/v1.0/myorg"
        # Data sources name a semantic model by the API's host (api.powerbi.com, or the sovereign cloud's).
        self.api_host = (urlsplit(api_url).netloc or "").lower()
        self.http = http
        self.lifetime_minutes = lifetime_minutes
        # A service principal profile acts in Power BI as itself: every call must name it.
        self.profile_id = profile_id
        self.profile_headers = {"X-PowerBI-Profile-Id": profile_id} if profile_id else {}

    def for_profile(self, profile_id: str | None) -> PowerBIClient:
        """This client acting as ``profile_id`` (None: as the app itself), on the same HTTP client."""
        if profile_id == self.profile_id:
            return self
        return PowerBIClient(self.api_url, self.http, self.lifetime_minutes, profile_id)

    def get(self, access_token: str, path: str, what: str = "") -> dict[str, Any]:
        """GET a Power BI path under ``/v1.0/myorg``."""
        return self._call(access_token, "GET", path, what=what or path)

    def find_dataset(self, access_token: str, dataset_id: str) -> Dataset:
        """Datasets - Get Dataset (not in a group): a semantic model whose workspace is not known."""
        body = self.get(access_token, f"/datasets/{dataset_id}", f"dataset {dataset_id}")
        return _dataset(body, "")

    # -- the list calls: one per workspace instead of one per item -------------------------------------------

    def list_reports(self, access_token: str, workspace_id: str) -> tuple[Item, ...]:
        """Reports - Get Reports In Group."""
        items = []
        for body in self._values(access_token, f"/groups/{workspace_id}/reports", "the workspace's reports"):
            report_id = parse_guid(str(body.get("id", "")))
            if report_id is None:
                continue
            dataset = parse_guid(str(body.get("datasetId") or ""))  # absent for a paginated report
            where = parse_guid(str(body.get("datasetWorkspaceId") or "")) or workspace_id
            datasets = ((where, dataset),) if dataset else ()
            paginated = body.get("reportType") == "PaginatedReport"
            items.append(
                Item("report", report_id, workspace_id, _embed_url(body, report_id), datasets, None, paginated)
            )
        return tuple(items)

    def list_dashboards(self, access_token: str, workspace_id: str) -> tuple[Item, ...]:
        """Dashboards - Get Dashboards In Group (their datasets come from their tiles)."""
        items = []
        for body in self._values(access_token, f"/groups/{workspace_id}/dashboards", "the workspace's dashboards"):
            if (dashboard_id := parse_guid(str(body.get("id", "")))) is not None:
                items.append(Item("dashboard", dashboard_id, workspace_id, _embed_url(body, dashboard_id)))
        return tuple(items)

    def list_tiles(self, access_token: str, workspace_id: str, dashboard_id: str) -> tuple[Item, ...]:
        """Dashboards - Get Tiles In Group."""
        path = f"/groups/{workspace_id}/dashboards/{dashboard_id}/tiles"
        items = []
        for body in self._values(access_token, path, f"tiles of dashboard {dashboard_id}"):
            if (tile_id := parse_guid(str(body.get("id", "")))) is None:
                continue
            dataset = parse_guid(str(body.get("datasetId") or ""))
            datasets = ((workspace_id, dataset),) if dataset else ()
            items.append(Item("tile", tile_id, workspace_id, _embed_url(body, tile_id), datasets, dashboard_id))
        return tuple(items)

    def list_datasets(self, access_token: str, workspace_id: str) -> tuple[Dataset, ...]:
        """Datasets - Get Datasets In Group, with their row-level-security flags."""
        values = self._values(access_token, f"/groups/{workspace_id}/datasets", "the workspace's datasets")
        return tuple(_dataset(body, workspace_id) for body in values if parse_guid(str(body.get("id", ""))))

    def semantic_models(self, access_token: str, workspace_id: str, report_id: str) -> tuple[str, ...]:
        """Reports - Get Datasources In Group, for a paginated report: the ids of the Power BI semantic models
        it queries. Such a model shows as an AnalysisServices source on ``pbiazure://<the API host>`` whose
        database is ``sobe_wowvirtualserver-<dataset id>``; any other source (SQL, say) needs no grant."""
        path = f"/groups/{workspace_id}/reports/{report_id}/datasources"
        models: list[str] = []
        for source in self._values(access_token, path, f"data sources of report {report_id}"):
            details = source.get("connectionDetails") or {}
            if source.get("datasourceType") != "AnalysisServices" or not isinstance(details, dict):
                continue
            server = urlsplit(str(details.get("server") or ""))
            database = str(details.get("database") or "")
            if server.scheme.lower() != "pbiazure" or server.netloc.lower() != self.api_host:
                continue
            dataset = parse_guid(database.removeprefix(MODEL_DATABASE_PREFIX))
            if database.startswith(MODEL_DATABASE_PREFIX) and dataset and dataset not in models:
                models.append(dataset)
        return tuple(models)

    def _values(self, access_token: str, path: str, what: str) -> list[dict[str, Any]]:
        values = self.get(access_token, path, what).get("value", [])
        return [v for v in values if isinstance(v, dict)] if isinstance(values, list) else []

    def generate_token(self, access_token: str, request: TokenRequest) -> EmbedToken:
        body, path = self._token_body(request)
        what = ", ".join(f"{item.kind} {item.id}" for item in request.items) or "report creation"
        answer = self._call(access_token, "POST", path, what=what, json=body)
        register_secret(answer.get("token"))  # an embed token never reaches a log line
        try:
            return EmbedToken(
                answer["token"],
                answer["tokenId"],
                datetime.fromisoformat(answer["expiration"]).astimezone(UTC),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PowerBIRefused("Power BI sent an embed token we could not read.", cause=repr(type(exc))) from exc

    def _token_body(self, request: TokenRequest) -> tuple[dict[str, Any], str]:
        """The GenerateToken body and path, as Microsoft's schemas define them."""
        body: dict[str, Any] = {}
        identities = [
            {"username": i.username}
            | ({"roles": list(i.roles)} if i.roles else {})
            | ({"customData": i.custom_data} if i.custom_data else {})
            | {"datasets": list(i.datasets)}
            | ({"reports": list(i.reports)} if i.reports else {})
            for i in request.identities
        ]
        first = request.items[0] if request.items else None
        if first is not None and request.api == "V1":
            # GenerateTokenRequest: the dashboard and tile APIs in the item's workspace.
            body["accessLevel"] = "View"
            path = f"/groups/{first.workspace_id}/dashboards/{first.dashboard_id or first.id}"
            path += f"/tiles/{first.id}/GenerateToken" if first.kind == "tile" else "/GenerateToken"
        else:
            # GenerateTokenRequestV2: reports with their datasets, or a dataset to create a report on.
            path = "/GenerateToken"
            datasets = sorted({d for item in request.items for _, d in item.datasets} | set(request.read_only_xmla))
            if request.items:
                body["reports"] = [{"id": i.id} | ({"allowEdit": True} if request.edit else {}) for i in request.items]
            if request.create_on is not None:
                datasets = [request.create_on.id]
            if datasets:
                xmla = set(request.read_only_xmla)
                body["datasets"] = [
                    {"id": d} | ({"xmlaPermissions": "ReadOnly"} if d in xmla else {}) for d in datasets
                ]
            targets = {request.create_on.workspace_id} if request.create_on else set()
            if request.edit:  # "save as" may only go to the report's own (allowed) workspace
                targets |= {i.workspace_id for i in request.items}
            if targets:
                body["targetWorkspaces"] = [{"id": w} for w in sorted(targets)]
        if identities:
            body["identities"] = identities
        if self.lifetime_minutes:
            body["lifetimeInMinutes"] = self.lifetime_minutes
        return body, path

    def _call(self, access_token: str, method: str, path: str, *, what: str, **kwargs: Any) -> dict[str, Any]:
        response = self.http.request(
            method,
            self.base + path,
            service="powerbi",
            headers={"Authorization": f"Bearer {access_token}", **self.profile_headers},
            **kwargs,
        )
        if response.ok:
            try:
                body = response.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                return body
            # Not Power BI's JSON: a proxy's or an outage page in front of it. Worth trying again later.
            raise Throttled(
                "Power BI is unavailable; try again after the time in Retry-After.",
                status=503,
                retry_after=_retry_after(response, self.http.clock),
                cause=f"unreadable Power BI answer (HTTP {response.status_code}, not JSON) to {method} {path}",
                request_id=response.headers.get("RequestId"),
            )
        raise _failure(response, what, method, path, self.http.clock)


def _dataset(body: dict[str, Any], workspace_id: str) -> Dataset:
    return Dataset(
        parse_guid(str(body.get("id", ""))) or str(body.get("id", "")),
        workspace_id,
        bool(body.get("isEffectiveIdentityRequired")),
        bool(body.get("isEffectiveIdentityRolesRequired")),
        str(body.get("createReportEmbedURL") or ""),
    )


def _embed_url(body: dict[str, Any], item_id: str) -> str:
    embed_url = body.get("embedUrl")
    if not isinstance(embed_url, str):
        raise PowerBIRefused(f"Power BI's answer for {item_id} has no embed URL.", cause="no embedUrl")
    return embed_url


def _failure(response: requests.Response, what: str, method: str, path: str, clock: Clock) -> EmbedError:
    status = response.status_code
    upstream = _upstream(response)
    cause = f"Power BI HTTP {status} {upstream.code} on {method} {path}"
    request_id = response.headers.get("RequestId")
    if status == 404:
        return NotFound(
            f"Power BI has no {what} in this workspace.",
            cause=cause,
            request_id=request_id,
            upstream=upstream,
            hint="(Or the signed-in identity cannot see it.)",
        )
    if status in TRANSIENT_STATUSES:
        # Still failing after our retries: an outage or throttling, not a refusal; the page may try again.
        return Throttled(
            f"Power BI is {'busy' if status == 429 else 'unavailable'}; try again after the time in Retry-After.",
            status=429 if status == 429 else 503,
            retry_after=_retry_after(response, clock),
            cause=cause,
            request_id=request_id,
            upstream=upstream,
        )
    hint = _REFUSAL_HINTS.get(status)
    return PowerBIRefused(
        f"Power BI refused the call (HTTP {status}, RequestId {request_id})" + (f": {hint}." if hint else "."),
        cause=cause,
        request_id=request_id,
        upstream=upstream,
    )


def _upstream(response: requests.Response) -> Upstream:
    """Power BI's own error code and message (``{"error": {"code", "message"}}``), when it sent them."""
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    if not isinstance(error, dict):
        error = {}
    return Upstream(response.status_code, str(error.get("code", "")), str(error.get("message", ""))[:300])


def _retry_after(response: requests.Response, clock: Clock) -> int:
    """Power BI's own wait (seconds or a date), whole seconds and at least 1; the default when it sent none."""
    seconds = retry_after_seconds(response.headers.get("Retry-After"), clock)
    return DEFAULT_RETRY_AFTER_SECONDS if seconds is None else max(1, math.ceil(seconds))
