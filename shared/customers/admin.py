"""Power BI's provisioning calls, as the onboarding command and the doctor make them.

Profiles - Create / Get / Delete Profile; Groups - Get Groups (``$filter``), Create Group, Delete Group;
Capacities - Groups AssignToCapacity; Reports - Get Reports In Group; Imports - Post Import In Group
(multipart PBIX) and Get Import In Group.  Each call may act as a service principal profile
(``X-PowerBI-Profile-Id``).  Calls go through the worker's ``HttpClient`` (retries inside a deadline);
only reads and deletes are retried, since repeating a create would create twice.  Any answer but the
expected one raises ``PowerBIRefused`` naming the call, Power BI's status, code and RequestId, never a token.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import requests

from shared.clock import Clock, Deadline
from shared.errors import PowerBIRefused, Upstream
from shared.http import RETRY_POLICY, HttpClient, call_context
from shared.powerbi import TokenSource

PROFILE_HEADER = "X-PowerBI-Profile-Id"
CALL_DEADLINE_SECONDS = 60.0
UPLOAD_DEADLINE_SECONDS = 600.0  # a PBIX may be up to 1 GB
TOKEN_MIN_SECONDS = 300.0
PAGE_SIZE = 5000  # profiles per Get Profiles call
# A create repeated after a lost answer would create twice: only reads and deletes are retried.
ADMIN_RETRY = RETRY_POLICY.new(allowed_methods=frozenset({"GET", "DELETE"}))


@dataclass(frozen=True)
class Profile:
    id: str
    display_name: str


@dataclass(frozen=True)
class Workspace:
    id: str
    name: str
    capacity_id: str | None = None


@dataclass(frozen=True)
class ImportState:
    state: str  # Publishing, Succeeded or Failed
    report_ids: tuple[str, ...] = ()


def _workspace(body: dict[str, Any]) -> Workspace:
    capacity = body.get("capacityId") if body.get("isOnDedicatedCapacity") else None
    return Workspace(str(body["id"]).lower(), str(body["name"]), str(capacity).lower() if capacity else None)


def _quoted(value: str) -> str:
    """An OData string literal."""
    return "'" + value.replace("'", "''") + "'"


class PowerBIAdmin:
    """The provisioning calls, each as the app itself or as one of its profiles (``profile``)."""

    def __init__(self, api_url: str, session: requests.Session | None, tokens: TokenSource, clock: Clock) -> None:
        self.base = f"{api_url.rstrip('/')}/v1.0/myorg"
        self.http = HttpClient(session, clock, ADMIN_RETRY)
        self.tokens = tokens
        self.clock = clock

    def _call(
        self,
        method: str,
        path: str,
        what: str,
        *,
        profile: str | None = None,
        ok: tuple[int, ...] = (200,),
        deadline: float = CALL_DEADLINE_SECONDS,
        **kwargs: Any,
    ) -> requests.Response:
        with call_context(Deadline.after(self.clock, deadline)):
            headers = {"Authorization": f"Bearer {self.tokens.token(TOKEN_MIN_SECONDS).value}"}
            if profile:
                headers[PROFILE_HEADER] = profile
            response = self.http.request(method, f"{self.base}{path}", headers=headers, **kwargs)
        if response.status_code not in ok:
            raise _refused(response, what)
        return response

    # -- profiles -----------------------------------------------------------------------------------------

    def profiles(self) -> list[Profile]:
        """Every profile of the app, page by page."""
        found: list[Profile] = []
        while True:
            params = {"$top": str(PAGE_SIZE), "$skip": str(len(found))}
            page = self._call("GET", "/profiles", "list the profiles", params=params).json().get("value", [])
            found += [Profile(str(p["id"]).lower(), str(p.get("displayName", ""))) for p in page]
            if len(page) < PAGE_SIZE:
                return found

    def create_profile(self, display_name: str) -> Profile:
        body = self._call("POST", "/profiles", f"create profile {display_name}", json={"displayName": display_name})
        answer = body.json()
        return Profile(str(answer["id"]).lower(), str(answer.get("displayName", display_name)))

    def delete_profile(self, profile_id: str) -> bool:
        """False when there was no such profile (already deleted)."""
        response = self._call("DELETE", f"/profiles/{profile_id}", f"delete profile {profile_id}", ok=(200, 404))
        return response.status_code == 200

    # -- workspaces ---------------------------------------------------------------------------------------

    def workspaces_named(self, name: str, profile: str | None) -> list[Workspace]:
        params = {"$filter": f"name eq {_quoted(name)}"}
        body = self._call("GET", "/groups", f"find workspace {name}", profile=profile, params=params).json()
        return [_workspace(w) for w in body.get("value", [])]

    def workspace(self, workspace_id: str, profile: str | None) -> Workspace | None:
        """The workspace if the caller (the profile, or the app) is a member of it: one call."""
        params = {"$filter": f"id eq {_quoted(workspace_id)}"}
        body = self._call("GET", "/groups", f"find workspace {workspace_id}", profile=profile, params=params).json()
        found = [_workspace(w) for w in body.get("value", [])]
        return found[0] if found else None

    def create_workspace(self, name: str, profile: str | None) -> Workspace:
        path = "/groups?workspaceV2=True"
        answer = self._call("POST", path, f"create workspace {name}", profile=profile, json={"name": name})
        return _workspace(answer.json())

    def assign_capacity(self, workspace_id: str, capacity_id: str, profile: str | None) -> None:
        path, body = f"/groups/{workspace_id}/AssignToCapacity", {"capacityId": capacity_id}
        what = f"assign workspace {workspace_id} to capacity {capacity_id}"
        self._call("POST", path, what, profile=profile, json=body)

    def delete_workspace(self, workspace_id: str, profile: str | None) -> bool:
        """False when there was no such workspace (already deleted)."""
        path = f"/groups/{workspace_id}"
        response = self._call("DELETE", path, f"delete workspace {workspace_id}", profile=profile, ok=(200, 404))
        return response.status_code == 200

    # -- content ------------------------------------------------------------------------------------------

    def report_names(self, workspace_id: str, profile: str | None) -> set[str]:
        path = f"/groups/{workspace_id}/reports"
        body = self._call("GET", path, f"list the reports of workspace {workspace_id}", profile=profile).json()
        return {str(r.get("name", "")).lower() for r in body.get("value", [])}

    def start_import(self, workspace_id: str, pbix: Path, profile: str | None) -> str:
        """Upload the PBIX (replacing a dataset and report of its name, so a re-run never duplicates)."""
        params = {"datasetDisplayName": pbix.name, "nameConflict": "CreateOrOverwrite"}
        with pbix.open("rb") as file:
            response = self._call(
                "POST",
                f"/groups/{workspace_id}/imports",
                f"import {pbix.name}",
                profile=profile,
                ok=(200, 201, 202),
                deadline=UPLOAD_DEADLINE_SECONDS,
                params=params,
                files={"file": (pbix.name, file, "application/octet-stream")},
            )
        return str(response.json()["id"])

    def import_state(self, workspace_id: str, import_id: str, profile: str | None) -> ImportState:
        path = f"/groups/{workspace_id}/imports/{import_id}"
        body = self._call("GET", path, f"read import {import_id}", profile=profile).json()
        reports = tuple(str(r["id"]).lower() for r in body.get("reports", []) if "id" in r)
        return ImportState(str(body.get("importState", "")), reports)


def _refused(response: requests.Response, what: str) -> PowerBIRefused:
    try:
        error = response.json().get("error", {})
    except (ValueError, AttributeError):
        error = {}
    code = str(error.get("code", "")) if isinstance(error, dict) else ""
    request_id = response.headers.get("RequestId")
    upstream = Upstream(response.status_code, code, str(error.get("message", ""))[:300] if code else "")
    return PowerBIRefused(
        f"Power BI refused to {what}: HTTP {response.status_code} {code}".rstrip()
        + (f" (RequestId {request_id})" if request_id else ""),
        cause=f"Power BI HTTP {response.status_code} {code} to {what}",
        request_id=request_id,
        upstream=upstream,
    )
