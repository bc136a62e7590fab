"""The fake's Power BI provisioning API: service principal profiles and the workspaces they own.

Profiles - Create / Get / Delete Profile (``/v1.0/myorg/profiles``); Groups - Create Group
(``POST /groups?workspaceV2=True``) and Delete Group; Capacities - Groups AssignToCapacity; Imports - Post Import
In Group (a multipart PBIX upload) and Get Import In Group.

Power BI's rules, as the emulator plays them:

* profiles belong to the service principal that created them; only a service principal creates, lists or deletes
  them (401 ``PowerBINotAuthorizedException`` otherwise); their display names need not be unique;
* a call with ``X-PowerBI-Profile-Id`` acts as that profile (see :func:`emulator.powerbi._caller`): a workspace
  it creates has the profile, not the app, as its Admin, so only that profile sees it; a profile the emulator
  does not know is refused (401) with ``fake.strict_profiles``, and otherwise acts with the app's memberships;
* workspace names are unique in the tenant (case-insensitively): a second Create Group of a name answers 409;
* AssignToCapacity, Delete Group and imports need the caller's role in the workspace (Admin; Admin, Member or
  Contributor for imports); a capacity must be one of ``fake.capacities`` (the empty GUID returns the workspace
  to shared capacity);
* an import answers 202 with its id, then ``importState`` ``Publishing`` for ``fake.import_publishing_polls``
  reads of it and ``fake.import_outcome`` (``Succeeded`` or ``Failed``) after: the report and its dataset appear
  in the workspace when it succeeds.  A file that is not a PBIX (a zip) is refused with 400.
"""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from emulator import catalog as cat
from emulator.catalog import same
from emulator.powerbi import NOT_AUTHORIZED, _caller, _invalid, _listing, _page, _report_view, signed_in
from emulator.wire import Req, iso, json_response, pbi_error, schema_error

if TYPE_CHECKING:
    from emulator.entra import IssuedAccessToken
    from emulator.server import FakeUpstream

_API = "https://api.powerbi.com/v1.0/myorg"
SHARED_CAPACITY = "00000000-0000-0000-0000-000000000000"  # AssignToCapacity's "unassign"
NAME_TAKEN = "PowerBIEntityAlreadyExists"  # not published; the status (409) is the point
CORRUPT_FILE = "RequestedFileIsEncryptedOrCorrupted"
_NAME_CONFLICTS = ("Ignore", "Abort", "Overwrite", "CreateOrOverwrite", "GenerateUniqueName")
_ZIP_MAGIC = b"PK\x03\x04"  # a PBIX is a zip archive


def _app(fake: FakeUpstream, request: Request) -> IssuedAccessToken | Response:
    """The signed-in service principal itself: profiles are managed by apps, never by users."""
    if isinstance(caller := signed_in(fake, request), Response):
        return caller
    return caller if caller.principal_type == "App" else pbi_error(401, NOT_AUTHORIZED)


def _profile_view(profile: dict[str, Any]) -> dict[str, Any]:
    return {"id": profile["id"], "displayName": profile["displayName"]}


def create_profile(fake: FakeUpstream, request: Request, body: Any) -> Response:
    if isinstance(app := _app(fake, request), Response):
        return app
    if body is None or (error := schema_error(body, {"displayName": Req(str)}, "request")) is not None:
        return _invalid(error or "The request body must be JSON")
    profile = {"id": str(uuid.uuid4()), "displayName": body["displayName"], "owner": app.principal}
    fake.profiles[profile["id"]] = profile
    return json_response(200, {"@odata.context": f"{_API}/$metadata#profiles/$entity"} | _profile_view(profile))


def list_profiles(fake: FakeUpstream, request: Request, body: Any) -> Response:
    if isinstance(app := _app(fake, request), Response):
        return app
    mine = [_profile_view(p) for p in fake.profiles.values() if same(p["owner"], app.principal)]
    return _listing("$metadata#profiles", _page(request, mine))


def delete_profile(fake: FakeUpstream, request: Request, body: Any, profile: str) -> Response:
    if isinstance(app := _app(fake, request), Response):
        return app
    found = fake.profiles.get(profile.lower())
    if found is None or not same(found["owner"], app.principal):
        return pbi_error(404, "PowerBIEntityNotFound")
    del fake.profiles[profile.lower()]
    return Response(status=200)


def _group_view(ws: dict[str, Any]) -> dict[str, Any]:
    return {
        "id": ws["id"],
        "isReadOnly": False,
        "isOnDedicatedCapacity": ws.get("isOnDedicatedCapacity", False),
        "name": ws["name"],
    } | ({"capacityId": ws["capacityId"]} if "capacityId" in ws else {})


def create_group(fake: FakeUpstream, request: Request, body: Any) -> Response:
    """Groups - Create Group: a new workspace whose only member, as Admin, is the caller (or its profile)."""
    if isinstance(caller := _caller(fake, request), Response):
        return caller
    if body is None or (error := schema_error(body, {"name": Req(str)}, "request")) is not None:
        return _invalid(error or "The request body must be JSON")
    if not body["name"].strip():
        return _invalid("'request.name' must not be empty")
    if any(same(ws["name"], body["name"]) for ws in fake.catalog["workspaces"]):
        return pbi_error(409, NAME_TAKEN, f"A workspace named '{body['name']}' already exists")
    ws = {
        "id": str(uuid.uuid4()),
        "name": body["name"],
        "isOnDedicatedCapacity": False,
        "members": {caller.principal: "Admin"},
    }
    fake.catalog["workspaces"].append(ws)
    return json_response(200, {"@odata.context": f"{_API}/$metadata#groups/$entity"} | _group_view(ws))


def _with_role(
    fake: FakeUpstream, request: Request, group: str, roles: tuple[str, ...]
) -> tuple[IssuedAccessToken, dict[str, Any]] | Response:
    """The caller and the workspace, when the caller holds one of ``roles`` in it (404 unknown, 401 else)."""
    if isinstance(caller := _caller(fake, request), Response):
        return caller
    if (ws := cat.workspace(fake.catalog, group)) is None:
        return pbi_error(404, "PowerBIEntityNotFound")
    if cat.members(ws).get(caller.principal.lower()) not in roles:
        return pbi_error(401, NOT_AUTHORIZED)
    return caller, ws


def delete_group(fake: FakeUpstream, request: Request, body: Any, group: str) -> Response:
    if isinstance(found := _with_role(fake, request, group, ("Admin",)), Response):
        return found
    fake.catalog["workspaces"].remove(found[1])
    return Response(status=200)


def assign_to_capacity(fake: FakeUpstream, request: Request, body: Any, group: str) -> Response:
    if isinstance(found := _with_role(fake, request, group, ("Admin",)), Response):
        return found
    if body is None or (error := schema_error(body, {"capacityId": Req(str)}, "request")) is not None:
        return _invalid(error or "The request body must be JSON")
    capacity, ws = body["capacityId"].lower(), found[1]
    if capacity == SHARED_CAPACITY:
        ws.pop("capacityId", None)
        ws["isOnDedicatedCapacity"] = False
    elif capacity in {c.lower() for c in fake.capacities}:
        ws["capacityId"], ws["isOnDedicatedCapacity"] = capacity, True
    else:
        return pbi_error(404, "PowerBIEntityNotFound")
    return Response(status=200)


def post_import(fake: FakeUpstream, request: Request, body: Any, group: str) -> Response:
    """Imports - Post Import In Group, a PBIX as multipart/form-data: 202 and the import's id."""
    if isinstance(found := _with_role(fake, request, group, ("Admin", "Member", "Contributor")), Response):
        return found
    name = request.args.get("datasetDisplayName", "")
    conflict = request.args.get("nameConflict", "Ignore")
    if not name:
        return _invalid("'datasetDisplayName' is required")
    if conflict not in _NAME_CONFLICTS:
        return _invalid(f"'nameConflict' must be one of {', '.join(_NAME_CONFLICTS)}")
    files = list(request.files.values()) if request.mimetype == "multipart/form-data" else []
    content = files[0].read() if len(files) == 1 else b""
    request.close()  # the parsed parts are temporary files
    if len(files) != 1:
        return _invalid("The file must be sent as multipart/form-data, in one part")
    if not content.startswith(_ZIP_MAGIC):
        return pbi_error(400, CORRUPT_FILE, "The file is not a Power BI file (.pbix)")
    title = name.removesuffix(".pbix")
    if conflict == "Abort" and any(same(r["name"], title) for r in found[1].get("reports", [])):
        return pbi_error(409, NAME_TAKEN, f"A report named '{title}' already exists")
    now = iso(fake.clock())
    entry = {
        "id": str(uuid.uuid4()),
        "name": name,
        "workspaceId": found[1]["id"],
        "conflict": conflict,
        "pollsLeft": fake.import_publishing_polls,
        "importState": "Publishing",
        "createdDateTime": now,
        "updatedDateTime": now,
    }
    fake.imports[entry["id"]] = entry
    return json_response(202, {"id": entry["id"]})


def get_import(fake: FakeUpstream, request: Request, body: Any, group: str, import_id: str) -> Response:
    """Imports - Get Import In Group: ``Publishing`` until the scripted number of reads, then the outcome."""
    if isinstance(found := _with_role(fake, request, group, cat.ROLES), Response):
        return found
    entry = fake.imports.get(import_id.lower())
    if entry is None or not same(entry["workspaceId"], found[1]["id"]):
        return pbi_error(404, "PowerBIEntityNotFound")
    if entry["importState"] == "Publishing":
        if entry["pollsLeft"] > 0:
            entry["pollsLeft"] -= 1
        else:
            entry["importState"], entry["updatedDateTime"] = fake.import_outcome, iso(fake.clock())
            if entry["importState"] == "Succeeded":
                _publish(found[1], entry)
    view = {k: entry[k] for k in ("id", "name", "importState", "createdDateTime", "updatedDateTime")}
    view |= {"connectionType": "import", "reports": [], "datasets": []}
    if entry["importState"] == "Succeeded":
        report = next(r for r in found[1]["reports"] if same(r["id"], entry["reportId"]))
        dataset = {"id": report["datasetId"], "name": report["name"]}
        view |= {"reports": [_report_view(fake, report, found[1]["id"])], "datasets": [dataset]}
    return json_response(200, view)


def _publish(ws: dict[str, Any], entry: dict[str, Any]) -> None:
    """The import's report and dataset land in the workspace (replacing those of the name when overwriting)."""
    title = entry["name"].removesuffix(".pbix")
    reports, datasets = ws.setdefault("reports", []), ws.setdefault("datasets", [])
    same_name = next((r for r in reports if same(r["name"], title)), None)
    if same_name is not None and entry["conflict"] in ("Overwrite", "CreateOrOverwrite"):
        entry["reportId"] = same_name["id"]
        return
    if entry["conflict"] == "GenerateUniqueName" and same_name is not None:
        title = f"{title} ({sum(1 for r in reports if r['name'].startswith(title))})"
    dataset_id, report_id = str(uuid.uuid4()), str(uuid.uuid4())
    datasets.append({"id": dataset_id, "name": title})
    reports.append({"id": report_id, "name": title, "datasetId": dataset_id})
    entry["reportId"] = report_id
