"""The fake's default identities and its Power BI catalogue: workspaces, their members, datasets, reports and
dashboards with tiles.

The catalogue is data (``catalog.json`` beside this file is the default; ``--catalog FILE`` or
``FakeUpstream(catalog=...)`` replace it).  Its shape::

    {"workspaces": [{
        "id", "name", "isOnDedicatedCapacity": false, "capacityId": "...",
        "members": {"user@contoso.com": "Admin", "<app or managed identity client id>": "Member"},
        "datasets": [{"id", "name", "isEffectiveIdentityRequired", "isEffectiveIdentityRolesRequired",
                      "roles": ["Region"]}],
        "reports": [{"id", "name", "datasetId", "reportType": "PowerBIReport" | "PaginatedReport",
                     "semanticModels": ["<dataset id>"], "datasources": [{"datasourceType", "connectionDetails"}]}],
        "dashboards": [{"id", "displayName", "tiles": [{"id", "title", "reportId", "datasetId"}]}]}]}

A member whose name contains ``@`` is a user, any other an app (service principal or managed identity,
named by its client id).  A workspace without ``members`` gets ``DEFAULT_MEMBERS``.  A dataset that a report
names but no workspace declares is implied, without row-level security.  A paginated report's data sources are
its ``semanticModels`` (Power BI datasets, answered as Analysis Services sources) and any other ``datasources``
as given.  GUIDs compare case-insensitively.
"""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from emulator.wire import Map, Req, schema_error

# Default identities (lowercase GUIDs, as Entra and Power BI return them).
TENANT_ID = "72f988bf-86f1-41af-91ab-2d7cd011db47"
CLIENT_ID = "8c1f7d6e-2b4a-4e0f-9d3c-5a6b7c8d9e01"  # a confidential app: service principal, or master user's app
CLIENT_SECRET = "fake-client-secret"
PUBLIC_CLIENT_ID = "1b2c3d4e-5f60-4718-8293-a4b5c6d7e8f9"
USERNAME = "embed.user@contoso.com"
PASSWORD = "correct horse battery staple"
MANAGED_IDENTITY_CLIENT_ID = "5e29463d-71da-4fe0-8e69-999b57db23b0"  # the app's system-assigned identity
USER_ASSIGNED_CLIENT_ID = "0c1d2e3f-4a5b-4c6d-9e7f-8a9b0c1d2e3f"  # a user-assigned identity of the app
POWERBI_RESOURCE = "https://analysis.windows.net/powerbi/api"

# The default catalogue, by name (see catalog.json).
WORKSPACE_ID = "f089354e-8366-4e18-aea3-4cb4a3a50b48"  # "Sales", shared capacity (trial tokens)
REPORT_ID = "5b218778-e7a5-4d73-8187-f10824047715"  # on DATASET_ID
DATASET_ID = "cfafbeb1-8037-4d0c-896e-a46fb27ff229"  # no row-level security
RLS_DATASET_ID = "8f4e2c1a-3b5d-4e6f-9a7b-1c2d3e4f5a6b"  # identity and roles required; roles Region, Manager
RLS_ROLES = ("Region", "Manager")
RLS_REPORT_ID = "2a7c9e1b-4d6f-4a8b-9c1d-3e5f7a9b1c2d"  # on RLS_DATASET_ID
IDENTITY_DATASET_ID = "6b1d3f5a-7c9e-4b2d-8f1a-3c5e7a9b2d4f"  # identity required, roles not (a live connection)
IDENTITY_REPORT_ID = "9d2f4b6a-8c1e-4d3f-a5b7-c9e1f3a5b7d9"  # on IDENTITY_DATASET_ID
PAGINATED_REPORT_ID = "4c8e2a6b-1d3f-4e5a-b7c9-d1e3f5a7b9c1"  # PaginatedReport: no dataset, a SQL source
PAGINATED_MODEL_REPORT_ID = "c7e9a1b3-5d2f-4c6e-8a0b-2d4f6a8c0e1f"  # PaginatedReport on DATASET_ID (a model)
PAGINATED_RLS_REPORT_ID = "d8f0b2c4-6e3a-4d7f-9b1c-3e5a7b9d1f2a"  # PaginatedReport on RLS_DATASET_ID
DASHBOARD_ID = "69ffaa6c-b36d-4d01-96f5-1ed67c64d4af"  # one tile, TILE_ID
TILE_ID = "312fbfe9-2eda-44e0-9ed0-ab5dc571bb4b"  # on REPORT_ID / DATASET_ID
RLS_DASHBOARD_ID = "7e3a5c9b-2d4f-4a6b-8c1d-e3f5a7b9c1d3"  # tiles on an RLS and on a plain dataset
RLS_TILE_ID = "a3c5e7f9-1b2d-4f4a-9c6e-8a1b3c5d7e9f"  # on RLS_REPORT_ID / RLS_DATASET_ID
PLAIN_TILE_ID = "b4d6f8a1-2c3e-4a5b-8d7f-9b2c4d6e8f1a"  # on REPORT_ID / DATASET_ID
OTHER_WORKSPACE_ID = "3d9b93c6-7b6d-4801-a491-1738910904fd"  # "Finance", dedicated capacity
CAPACITY_ID = "0f084df7-c13d-451b-af5f-ed0c466403b2"  # Finance's capacity; AssignToCapacity knows it
OTHER_REPORT_ID = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d"  # on OTHER_DATASET_ID
OTHER_DATASET_ID = "d4c3b2a1-6f5e-4b7a-9d8c-5c4b3a2f1e0d"
UNSHARED_WORKSPACE_ID = "e380d1d0-1fa6-460b-9a90-1a5c6b02414c"  # "Human Resources": no default identity is a member
UNSHARED_REPORT_ID = "e6a8c0d2-f4b6-4d8e-a0c2-e4f6a8b0c2d4"
UNSHARED_DATASET_ID = "c2e4a6b8-d0f2-4a4c-8e6a-b8d0f2a4c6e8"

ROLES = ("Admin", "Member", "Contributor", "Viewer")
DEFAULT_MEMBERS = {
    USERNAME: "Admin",
    CLIENT_ID: "Member",
    MANAGED_IDENTITY_CLIENT_ID: "Member",
    USER_ASSIGNED_CLIENT_ID: "Member",
}

_SCHEMA = {
    "workspaces": Req(
        [
            {
                "id": Req(str),
                "name": Req(str),
                "isOnDedicatedCapacity": bool,
                "capacityId": str,
                "members": Map(ROLES),
                "datasets": [
                    {
                        "id": Req(str),
                        "name": Req(str),
                        "isEffectiveIdentityRequired": bool,
                        "isEffectiveIdentityRolesRequired": bool,
                        "roles": [str],
                    }
                ],
                "reports": [
                    {
                        "id": Req(str),
                        "name": Req(str),
                        "datasetId": str,
                        "reportType": ("PowerBIReport", "PaginatedReport"),
                        "semanticModels": [str],
                        "datasources": [dict],
                    }
                ],
                "dashboards": [
                    {
                        "id": Req(str),
                        "displayName": Req(str),
                        "tiles": [{"id": Req(str), "title": Req(str), "reportId": str, "datasetId": str}],
                    }
                ],
            }
        ]
    )
}

DEFAULT_CATALOG: dict[str, Any] = json.loads(Path(__file__).with_name("catalog.json").read_text(encoding="utf-8"))


def load(path: str | Path) -> dict[str, Any]:
    """A catalogue from a JSON file, checked (ValueError lists every problem)."""
    catalog: dict[str, Any] = json.loads(Path(path).read_text(encoding="utf-8"))
    check(catalog)
    return catalog


def check(catalog: Any) -> None:
    """Raise ValueError naming every problem: the shape, then the references between items."""
    if (shape := schema_error(catalog, _SCHEMA, "catalog")) is not None:
        raise ValueError(f"Invalid catalogue: {shape}")
    problems = []
    for ws in catalog["workspaces"]:
        for report in ws.get("reports", []):
            paginated = report.get("reportType") == "PaginatedReport"
            if paginated == ("datasetId" in report):
                problems.append(f"report {report['id']}: a PowerBIReport needs a datasetId, a PaginatedReport has none")
            if not paginated and ("semanticModels" in report or "datasources" in report):
                problems.append(f"report {report['id']}: only a PaginatedReport lists data sources")
            for model in report.get("semanticModels", []):
                if find(catalog, "datasets", model) is None:
                    problems.append(f"report {report['id']}: unknown semantic model {model}")
        for dataset in ws.get("datasets", []):
            if dataset.get("isEffectiveIdentityRolesRequired") and not (
                dataset.get("isEffectiveIdentityRequired") and dataset.get("roles")
            ):
                problems.append(f"dataset {dataset['id']}: roles required, but no identity required or no roles")
        for tile in (t for d in ws.get("dashboards", []) for t in d.get("tiles", [])):
            for kind, key in (("reports", "reportId"), ("datasets", "datasetId")):
                if key in tile and find(catalog, kind, tile[key]) is None:
                    problems.append(f"tile {tile['id']}: unknown {key} {tile[key]}")
    if problems:
        raise ValueError("Invalid catalogue: " + "; ".join(problems))


def same(a: str, b: str) -> bool:
    return a.lower() == b.lower()


def workspace(catalog: dict[str, Any], group: str) -> dict[str, Any] | None:
    return next((ws for ws in catalog.get("workspaces", []) if same(ws["id"], group)), None)


def items(ws: dict[str, Any], kind: str, catalog: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A workspace's reports, dashboards or datasets (declared, then implied by its reports unless a workspace of
    ``catalog`` declares them: a report may use a dataset of another workspace)."""
    found: list[dict[str, Any]] = list(ws.get(kind, []))
    if kind == "datasets":
        own = {d["id"].lower() for d in found}
        implied = {r["datasetId"].lower(): r["datasetId"] for r in ws.get("reports", []) if "datasetId" in r}
        implied = {key: i for key, i in implied.items() if key not in own}
        if implied:  # only then look through the other workspaces (a catalogue may hold a thousand)
            others = (catalog or {}).get("workspaces", [])
            declared = {d["id"].lower() for w in others for d in w.get("datasets", [])}
            found += [{"id": i, "name": i} for key, i in implied.items() if key not in declared]
    return found


def find(catalog: dict[str, Any], kind: str, item_id: str, group: str | None = None) -> dict[str, Any] | None:
    """The report, dashboard or dataset ``item_id`` (in ``group`` if given), with ``workspaceId`` added."""
    for ws in catalog.get("workspaces", []):
        if group is not None and not same(ws["id"], group):
            continue
        if (item := next((i for i in items(ws, kind, catalog) if same(i["id"], item_id)), None)) is not None:
            return item | {"workspaceId": ws["id"]}
    return None


def members(ws: dict[str, Any]) -> dict[str, str]:
    """Principal (lower-cased) -> role."""
    return {k.lower(): v for k, v in ws.get("members", DEFAULT_MEMBERS).items()}


def set_member(catalog: dict[str, Any], group: str, principal: str, role: str | None) -> None:
    """Give ``principal`` ``role`` in the workspace, or remove it (None)."""
    ws = workspace(catalog, group)
    if ws is None:
        raise KeyError(f"no workspace {group}")
    current = {k: v for k, v in ws.get("members", DEFAULT_MEMBERS).items() if not same(k, principal)}
    ws["members"] = current | ({principal: role} if role else {})


def fresh(catalog: dict[str, Any] | None) -> dict[str, Any]:
    """A private copy of ``catalog`` (default: DEFAULT_CATALOG), checked."""
    copied = copy.deepcopy(DEFAULT_CATALOG if catalog is None else catalog)
    check(copied)
    return copied
