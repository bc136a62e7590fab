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
    """A report or dashboard as far as embedding needs it."""

    kind: str
    id: str
    workspace_id: str
    embed_url: str
    dataset_id: str | None = None


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

    def get(self, access_token: str, path: str) -> dict[str, Any]:
        """GET any Power BI path under ``/v1.0/myorg`` (the doctor lists workspaces and items with it)."""
        return self._call(access_token, "GET", path, what=path)

    def get_item(self, access_token: str, kind: str, workspace_id: str, item_id: str) -> Item:
        """GET the report or dashboard in its workspace, for its embed URL (and a report's dataset)."""
        body = self._call(access_token, "GET", f"/groups/{workspace_id}/{kind}s/{item_id}", what=f"{kind} {item_id}")
        embed_url = body.get("embedUrl")
        if not isinstance(embed_url, str):
            raise PowerBIRefused(f"Power BI's answer for {kind} {item_id} has no embed URL.", cause="no embedUrl")
        return Item(kind, item_id, workspace_id, embed_url, body.get("datasetId") or None)

    def generate_token(self, access_token: str, item: Item) -> EmbedToken:
        lifetime = {"lifetimeInMinutes": self.lifetime_minutes} if self.lifetime_minutes else {}
        if item.kind == "report":
            body: dict[str, Any] = {"reports": [{"id": item.id}], **lifetime}
            if item.dataset_id:  # a paginated report has no dataset
                body["datasets"] = [{"id": item.dataset_id}]
            path = "/GenerateToken"
        else:
            body = {"accessLevel": "View", **lifetime}
            path = f"/groups/{item.workspace_id}/dashboards/{item.id}/GenerateToken"
        answer = self._call(access_token, "POST", path, what=f"{item.kind} {item.id}", json=body)
        try:
            return EmbedToken(
                answer["token"],
                answer["tokenId"],
                datetime.fromisoformat(answer["expiration"]).astimezone(UTC),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise PowerBIRefused("Power BI sent an embed token we could not read.", cause=repr(type(exc))) from exc

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
