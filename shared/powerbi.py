"""The Power BI REST calls the function makes, and what their failures mean.

Bodies follow Microsoft's published schemas: reports use the V2 multi-resource
GenerateToken (``POST /v1.0/myorg/GenerateToken`` with the report and its dataset),
dashboards the dashboard GenerateToken in its group with ``accessLevel: View``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import requests

from shared.errors import EmbedError, NotFound, PowerBIRefused, Throttled, Upstream
from shared.http import HttpClient
from shared.redact import register_secret

# When Power BI throttles without saying for how long.
DEFAULT_RETRY_AFTER_SECONDS = 30

# What a person can do about Power BI's refusals on this path.
_REFUSAL_HINTS = {
    401: "the signed-in identity may not use this workspace: make it a member (Member or Admin) "
    "and, for a service principal, allow service principals in the Power BI tenant settings",
    403: "Power BI forbids this call: check the identity's workspace role, the app's Power BI "
    "permissions, and whether the workspace is on a capacity (trial tokens run out)",
}


@dataclass(frozen=True)
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


@dataclass(frozen=True)
class Dataset:
    id: str
    workspace_id: str
    identity_required: bool
    roles_required: bool
    create_embed_url: str


@dataclass(frozen=True)
class TokenRequest:
    """What one GenerateToken call is for: items to view or edit, or a dataset to create a report on."""

    items: tuple[Item, ...] = ()
    edit: bool = False
    create_on: Dataset | None = None
    # Effective identities: (username, roles, custom data, the dataset ids it applies to).
    identities: tuple[tuple[str, tuple[str, ...], str | None, tuple[str, ...]], ...] = ()


@dataclass(frozen=True)
class EmbedToken:
    token: str = field(repr=False)
    token_id: str
    expiration: datetime

    @property
    def expires_at(self) -> float:
        return self.expiration.timestamp()


class PowerBIClient:
    def __init__(
        self, api_url: str, http: HttpClient, lifetime_minutes: int | None = None, profile_id: str | None = None
    ) -> None:
        self.base = f"{api_url}/v1.0/myorg"
        self.http = http
        self.lifetime_minutes = lifetime_minutes
        # A service principal profile acts in Power BI as itself: every call must name it.
        self.profile_headers = {"X-PowerBI-Profile-Id": profile_id} if profile_id else {}

    def get(self, access_token: str, path: str, what: str = "") -> dict[str, Any]:
        """GET a Power BI path under ``/v1.0/myorg``."""
        return self._call(access_token, "GET", path, what=what or path)

    def get_report(self, access_token: str, workspace_id: str, report_id: str) -> Item:
        body = self.get(access_token, f"/groups/{workspace_id}/reports/{report_id}", f"report {report_id}")
        dataset = body.get("datasetId")  # absent for a paginated report
        where = str(body.get("datasetWorkspaceId") or workspace_id).lower()
        datasets = ((where, str(dataset).lower()),) if dataset else ()
        return Item("report", report_id, workspace_id, _embed_url(body, report_id), datasets)

    def get_dashboard(self, access_token: str, workspace_id: str, dashboard_id: str) -> Item:
        path = f"/groups/{workspace_id}/dashboards/{dashboard_id}"
        body = self.get(access_token, path, f"dashboard {dashboard_id}")
        tiles = self.get(access_token, f"{path}/tiles", f"tiles of dashboard {dashboard_id}").get("value", [])
        datasets = sorted({(workspace_id, str(t["datasetId"]).lower()) for t in tiles if t.get("datasetId")})
        return Item("dashboard", dashboard_id, workspace_id, _embed_url(body, dashboard_id), tuple(datasets))

    def get_tile(self, access_token: str, workspace_id: str, dashboard_id: str, tile_id: str) -> Item:
        path = f"/groups/{workspace_id}/dashboards/{dashboard_id}/tiles/{tile_id}"
        body = self.get(access_token, path, f"tile {tile_id} of dashboard {dashboard_id}")
        dataset = body.get("datasetId")
        datasets = ((workspace_id, str(dataset).lower()),) if dataset else ()
        return Item("tile", tile_id, workspace_id, _embed_url(body, tile_id), datasets, dashboard_id)

    def get_dataset(self, access_token: str, workspace_id: str, dataset_id: str) -> Dataset:
        body = self.get(access_token, f"/groups/{workspace_id}/datasets/{dataset_id}", f"dataset {dataset_id}")
        return Dataset(
            dataset_id,
            workspace_id,
            bool(body.get("isEffectiveIdentityRequired")),
            bool(body.get("isEffectiveIdentityRolesRequired")),
            str(body.get("createReportEmbedURL") or ""),
        )

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
            {"username": username, "datasets": list(datasets)}
            | ({"roles": list(roles)} if roles else {})
            | ({"customData": custom} if custom else {})
            for username, roles, custom, datasets in request.identities
        ]
        first = request.items[0] if request.items else None
        if first is not None and first.kind in ("dashboard", "tile"):
            # GenerateTokenRequest: the dashboard and tile APIs in the item's workspace.
            body["accessLevel"] = "View"
            path = f"/groups/{first.workspace_id}/dashboards/{first.dashboard_id or first.id}"
            path += f"/tiles/{first.id}/GenerateToken" if first.kind == "tile" else "/GenerateToken"
        else:
            # GenerateTokenRequestV2: reports with their datasets, or a dataset to create a report on.
            path = "/GenerateToken"
            datasets = sorted({d for item in request.items for _, d in item.datasets})
            if request.items:
                body["reports"] = [{"id": i.id} | ({"allowEdit": True} if request.edit else {}) for i in request.items]
            if request.create_on is not None:
                datasets = [request.create_on.id]
            if datasets:
                body["datasets"] = [{"id": d} for d in datasets]
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
            raise PowerBIRefused(
                "Power BI sent an answer we could not read.",
                cause=f"unreadable Power BI answer to {method} {path}",
                request_id=response.headers.get("RequestId"),
            )
        raise _failure(response, what, method, path)


def _embed_url(body: dict[str, Any], item_id: str) -> str:
    embed_url = body.get("embedUrl")
    if not isinstance(embed_url, str):
        raise PowerBIRefused(f"Power BI's answer for {item_id} has no embed URL.", cause="no embedUrl")
    return embed_url


def _failure(response: requests.Response, what: str, method: str, path: str) -> EmbedError:
    status = response.status_code
    upstream = _upstream(response)
    cause = f"Power BI HTTP {status} {upstream.code} on {method} {path}"
    request_id = response.headers.get("RequestId")
    if status == 404:
        return NotFound(
            f"Power BI has no {what} in this workspace, or the identity cannot see it.",
            cause=cause,
            request_id=request_id,
            upstream=upstream,
        )
    if status in (429, 503):
        return Throttled(
            f"Power BI is {'busy' if status == 429 else 'unavailable'}; try again after the time in Retry-After.",
            status=status,
            retry_after=_retry_after(response),
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


def _retry_after(response: requests.Response) -> int:
    value = response.headers.get("Retry-After", "")
    return int(value) if value.strip().isdigit() else DEFAULT_RETRY_AFTER_SECONDS
