"""The fake's Power BI REST API (``/v1.0/myorg``), behind bearer tokens issued by the fake Entra ID.

Reads: Groups - Get Groups (only the caller's workspaces), Get Group Users; Reports / Dashboards / Datasets -
Get ... In Group (list and one); Datasets - Get Dataset (by id alone); Reports - Get Datasources In Group;
Dashboards - Get Tiles / Get Tile In Group.  Embed tokens: Generate Token (V2),
Reports GenerateTokenInGroup (View, Edit, Create), Reports GenerateTokenForCreateInGroup, Dashboards and
Tiles GenerateTokenInGroup.

Power BI's rules, enforced (each answer as the service gives it, see the constants below):

* a valid bearer token for the Power BI resource (401 ``TokenExpired`` / ``PowerBINotAuthorizedException``);
  ``rejected_tokens`` refuses a token still valid by time (revoked: ``PowerBINotAuthorizedException``, or
  ``TokenExpired`` early) with the same answers;
* an app (service principal, managed identity) only while ``service_principals_allowed`` (401, with
  ``X-PowerBI-Error-Info: ServicePrincipalIsNotAllowedByTenantAdminSwitch``);
* the caller is a member of every workspace involved (401 ``PowerBINotAuthorizedException``); unknown ids 404;
* request bodies follow the published schemas, V2 takes at most 50 reports, datasets and target workspaces;
* effective identities: a dataset without RLS refuses one, a dataset that requires one refuses a token
  without it, roles when roles are required, known roles only; username at most 256 ASCII characters and no
  spaces; at most 50 roles of at most 50 characters without commas; an identity's datasets are the token's;
* ``trial_tokens_left``: at 0, a token involving a workspace without dedicated capacity is refused (403);
* a paginated report on Power BI semantic models: V2 only, each model in ``datasets`` with ``xmlaPermissions:
  ReadOnly`` (else 400: the report could not query its data); an effective identity's ``reports`` must be
  paginated reports of the token, and a paginated report on a model that requires an identity must be named
  in that identity's ``reports``.
"""

from __future__ import annotations

import copy
import dataclasses
import secrets
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from werkzeug.wrappers import Request, Response

from emulator import catalog as cat
from emulator.catalog import POWERBI_RESOURCE, same
from emulator.entra import IssuedAccessToken
from emulator.wire import Req, iso, json_response, pbi_error, schema_error

if TYPE_CHECKING:
    from emulator.server import FakeUpstream

# Power BI's own words where Microsoft publishes or the service is known to send them.
NOT_AUTHORIZED = "PowerBINotAuthorizedException"
PROFILE_HEADER = "X-PowerBI-Profile-Id"  # a service principal acting as one of its profiles
TENANT_SWITCH_INFO = "ServicePrincipalIsNotAllowedByTenantAdminSwitch"  # in X-PowerBI-Error-Info
TRIAL_QUOTA_CODE = "TokenQuotaExceeded"  # the code is not published; the status (403) and the cause are
TRIAL_QUOTA_MESSAGE = (
    "The user has exceeded the amount of embed token that can be generated on a shared capacity. Purchase Azure "
    "capacities to generate embed tokens and assign the workspace to that capacity."
)
NO_IDENTITY_WANTED = "Creating embed token for accessing dataset {} shouldn't have effective identity"
IDENTITY_REQUIRED = "Creating embed token for accessing dataset {} requires effective identity to be provided"
ROLES_REQUIRED = (
    "Creating embed token for accessing dataset {} requires roles to be included in provided effective identity"
)
MAX_ITEMS = 50  # V2: reports, datasets, target workspaces; and roles per identity
MODEL_DATABASE = "sobe_wowvirtualserver-"  # a semantic model's database name as a paginated report's source

_API = "https://api.powerbi.com/v1.0/myorg"
# Base64 of {"clusterUrl": ...}, exactly as the service appends it to embed URLs.
_EMBED_CONFIG = (
    "eyJjbHVzdGVyVXJsIjoiaHR0cHM6Ly9XQUJJLVVTLU5PUlRILUNFTlRSQUwtcmVkaXJlY3QuYW5hbHlzaXMud2luZG93cy5uZXQifQ%3d%3d"
)
_GENERATE_TOKEN_CONTEXT = (
    "http://api.powerbi.com/v1.0/myorg/$metadata#Microsoft.PowerBI.ServiceContracts.Api.V1.GenerateTokenResponse"
)

# Request schemas from the Power BI REST reference (see emulator.wire for the notation).
_IDENTITY = {  # EffectiveIdentity
    "username": str,
    "roles": [str],
    "datasets": Req([str]),  # "DatasetId is mandatory for any EffectiveIdentity" (embedded troubleshooting)
    "reports": [str],
    "customData": str,
    "identityBlob": {"value": Req(str)},
}
_V2_SCHEMA = {  # GenerateTokenRequestV2
    "datasets": [{"id": Req(str), "xmlaPermissions": ("Off", "ReadOnly")}],
    "reports": [{"id": Req(str), "allowEdit": bool}],
    "targetWorkspaces": [{"id": Req(str)}],
    "identities": [_IDENTITY],
    "lifetimeInMinutes": int,
    "datasourceIdentities": [{"datasources": [dict], "identityBlob": Req(str)}],
}
_V1_SCHEMA = {  # GenerateTokenRequest
    "accessLevel": ("View", "Edit", "Create"),
    "allowSaveAs": bool,
    "datasetId": str,
    "identities": [_IDENTITY],
    "lifetimeInMinutes": int,
}
# In-group GenerateToken: the access levels each API takes, and the default when the body names none.
_LEVELS = {"reports": ("View", "Edit", "Create"), "create": ("Create",), "dashboards": ("View",), "tiles": ("View",)}


@dataclass(frozen=True)
class IssuedEmbedToken:
    token_id: str
    expires_at: float  # epoch seconds
    expiration: str  # as sent on the wire
    body: dict[str, Any]
    principal: str
    kind: str = ""  # "v2", or the in-group API: "reports", "create", "dashboards", "tiles"
    datasets: tuple[str, ...] = ()  # the datasets the token covers
    identities: tuple[dict[str, Any], ...] = ()  # the effective identities, as sent


# -- who is calling ------------------------------------------------------------------------------------------


def _caller(fake: FakeUpstream, request: Request) -> IssuedAccessToken | Response:
    """The caller (see ``signed_in``), as the profile its ``X-PowerBI-Profile-Id`` names when it names one: every
    membership check then applies to the profile, not to the app."""
    issued = signed_in(fake, request)
    profile_id = request.headers.get(PROFILE_HEADER)
    if isinstance(issued, Response) or profile_id is None:
        return issued
    profile = fake.profiles.get(profile_id.strip().lower())
    if profile is None and not fake.strict_profiles and issued.principal_type == "App":
        return issued  # a profile made outside the emulator: it acts with the app's memberships
    # Profiles belong to service principals: a user, another app's profile or an unknown one is not authorized.
    if issued.principal_type != "App" or profile is None or not same(profile["owner"], issued.principal):
        return pbi_error(401, NOT_AUTHORIZED)
    return dataclasses.replace(issued, principal=profile["id"])


def signed_in(fake: FakeUpstream, request: Request) -> IssuedAccessToken | Response:
    """The caller's Entra token, or the 401 Power BI answers without a valid one for its resource, or to an app
    while the tenant setting forbids service principals."""
    scheme, _, value = request.headers.get("Authorization", "").partition(" ")
    issued = fake.access_tokens.get(value) if scheme.lower() == "bearer" else None
    rejected = fake.rejected_tokens.get(value) if issued is not None else None
    expired = issued is not None and (issued.expires_at <= fake.clock() or rejected == "TokenExpired")
    if rejected is not None and not expired:
        issued = None  # revoked
    if issued is not None and not expired and POWERBI_RESOURCE in issued.scope:
        if issued.principal_type == "App" and not fake.service_principals_allowed:
            return pbi_error(401, NOT_AUTHORIZED, headers={"X-PowerBI-Error-Info": TENANT_SWITCH_INFO})
        return issued
    if expired:
        response = pbi_error(401, "TokenExpired", "Access token has expired, resubmit with a new access token")
    else:
        response = pbi_error(401, NOT_AUTHORIZED, "The bearer token is missing or not valid")
    response.headers["WWW-Authenticate"] = (
        f'Bearer authorization_uri={fake.base_url}/common/oauth2/authorize, error="invalid_token"'
    )
    return response


def _refusal(fake: FakeUpstream, bearer: IssuedAccessToken, groups: list[str]) -> Response | None:
    """404 for an unknown workspace, 401 for one the caller is not a member of, else None."""
    for group in groups:
        ws = cat.workspace(fake.catalog, group)
        if ws is None:
            return pbi_error(404, "PowerBIEntityNotFound")
        if bearer.principal.lower() not in cat.members(ws):
            return pbi_error(401, NOT_AUTHORIZED)
    return None


def _in_group(fake: FakeUpstream, request: Request, group: str) -> IssuedAccessToken | Response:
    if isinstance(bearer := _caller(fake, request), Response):
        return bearer
    return _refusal(fake, bearer, [group]) or bearer


# -- reads ---------------------------------------------------------------------------------------------------


def _embed_url(page: str, g: str, **ids: str) -> str:
    query = "&".join(f"{k}={v}" for k, v in ids.items())
    return f"https://app.powerbi.com/{page}?{query}&groupId={g}&w=2&config={_EMBED_CONFIG}"


def _report_view(fake: FakeUpstream, report: dict[str, Any], g: str) -> dict[str, Any]:
    rid, paginated = report["id"], report.get("reportType") == "PaginatedReport"
    view = {
        "id": rid,
        "reportType": report.get("reportType", "PowerBIReport"),
        "name": report["name"],
        "webUrl": f"https://app.powerbi.com/groups/{g}/{'rdlreports' if paginated else 'reports'}/{rid}",
        "embedUrl": _embed_url("rdlEmbed" if paginated else "reportEmbed", g, reportId=rid),
        "isFromPbix": not paginated,
        "isOwnedByMe": True,
        "users": [],
        "subscriptions": [],
    }
    if not paginated:  # a paginated report has no dataset
        dataset = cat.find(fake.catalog, "datasets", report["datasetId"]) or {"workspaceId": g}
        view |= {"datasetId": report["datasetId"], "datasetWorkspaceId": dataset["workspaceId"]}
    return view


def _dashboard_view(fake: FakeUpstream, dashboard: dict[str, Any], g: str) -> dict[str, Any]:
    did = dashboard["id"]
    return {
        "id": did,
        "displayName": dashboard["displayName"],
        "isReadOnly": False,
        "webUrl": f"https://app.powerbi.com/groups/{g}/dashboards/{did}",
        "embedUrl": _embed_url("dashboardEmbed", g, dashboardId=did),
        "users": [],
        "subscriptions": [],
    }


def _dataset_view(fake: FakeUpstream, dataset: dict[str, Any], g: str) -> dict[str, Any]:
    did = dataset["id"]
    admin = next((p for p, role in cat.members(cat.workspace(fake.catalog, g) or {}).items() if role == "Admin"), "")
    return {
        "id": did,
        "name": dataset["name"],
        "webUrl": f"https://app.powerbi.com/groups/{g}/datasets/{did}",
        "addRowsAPIEnabled": False,
        "configuredBy": admin,
        "isRefreshable": True,
        "isEffectiveIdentityRequired": dataset.get("isEffectiveIdentityRequired", False),
        "isEffectiveIdentityRolesRequired": dataset.get("isEffectiveIdentityRolesRequired", False),
        "isOnPremGatewayRequired": False,
        "targetStorageMode": "Abf",
        "createReportEmbedURL": f"https://app.powerbi.com/reportEmbed?config={_EMBED_CONFIG}",
        "qnaEmbedURL": f"https://app.powerbi.com/qnaEmbed?groupId={g}&config={_EMBED_CONFIG}",
        "users": [],
    }


def _tile_view(tile: dict[str, Any], dashboard_id: str, g: str) -> dict[str, Any]:
    tid = tile["id"]
    view = {
        "id": tid,
        "title": tile["title"],
        "embedUrl": f"https://app.powerbi.com/embed?dashboardId={dashboard_id}&tileId={tid}&groupId={g}",
        "rowSpan": 0,
        "colSpan": 0,
    }
    return view | {k: tile[k] for k in ("reportId", "datasetId") if k in tile}


_VIEWS = {"reports": _report_view, "dashboards": _dashboard_view, "datasets": _dataset_view}


def _page(request: Request, values: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """OData $skip and $top."""
    skip, top = request.args.get("$skip", type=int) or 0, request.args.get("$top", type=int)
    return values[skip:][:top] if top is not None else values[skip:]


def _listing(context: str, values: list[dict[str, Any]]) -> Response:
    return json_response(200, {"@odata.context": f"{_API}/{context}", "value": values})


def _filter(expression: str) -> tuple[str, str] | None:
    """The OData filters the emulator understands, ``name eq '...'`` and ``id eq '...'``, as (property, value)."""
    prop, _, value = expression.strip().partition(" eq ")
    if prop.strip() not in ("name", "id") or len(value) < 2 or not (value[0] == value[-1] == "'"):
        return None
    return prop.strip(), value[1:-1].replace("''", "'")


def groups(fake: FakeUpstream, request: Request, body: Any) -> Response:
    if isinstance(bearer := _caller(fake, request), Response):
        return bearer
    mine = [ws for ws in fake.catalog.get("workspaces", []) if bearer.principal.lower() in cat.members(ws)]
    if (expression := request.args.get("$filter")) is not None:
        if (wanted := _filter(expression)) is None:
            return _invalid("The emulator understands only $filter=name eq '...' or id eq '...'")
        mine = [ws for ws in mine if same(str(ws[wanted[0]]), wanted[1])]
    values = [
        {
            "id": ws["id"],
            "name": ws["name"],
            "isReadOnly": False,
            "isOnDedicatedCapacity": ws.get("isOnDedicatedCapacity", False),
            "type": "Workspace",
        }
        | ({"capacityId": ws["capacityId"]} if "capacityId" in ws else {})
        for ws in mine
    ]
    return _listing("$metadata#groups", _page(request, values))


def group_items(fake: FakeUpstream, request: Request, body: Any, group: str, kind: str) -> Response:
    if isinstance(caller := _in_group(fake, request, group), Response):
        return caller
    ws = cat.workspace(fake.catalog, group) or {}
    values = [_VIEWS[kind](fake, item, ws["id"]) for item in cat.items(ws, kind, fake.catalog)]
    return _listing(f"groups/{ws['id']}/$metadata#{kind}", _page(request, values))


def group_item(fake: FakeUpstream, request: Request, body: Any, group: str, kind: str, item: str) -> Response:
    if isinstance(caller := _in_group(fake, request, group), Response):
        return caller
    if (found := cat.find(fake.catalog, kind, item, group)) is None:
        return pbi_error(404, "PowerBIEntityNotFound")
    g = found["workspaceId"]
    context = {"@odata.context": f"{_API}/groups/{g}/$metadata#{kind}/$entity"}
    return json_response(200, context | _VIEWS[kind](fake, found, g))


def dataset_by_id(fake: FakeUpstream, request: Request, body: Any, item: str) -> Response:
    """Datasets - Get Dataset: a dataset in any workspace the caller is a member of."""
    if isinstance(bearer := _caller(fake, request), Response):
        return bearer
    if (found := cat.find(fake.catalog, "datasets", item)) is None:
        return pbi_error(404, "PowerBIEntityNotFound")
    if refused := _refusal(fake, bearer, [found["workspaceId"]]):
        return refused
    g = found["workspaceId"]
    return json_response(200, {"@odata.context": f"{_API}/$metadata#datasets/$entity"} | _dataset_view(fake, found, g))


def datasources(fake: FakeUpstream, request: Request, body: Any, group: str, item: str) -> Response:
    """Reports - Get Datasources In Group.  A semantic model answers as the service does: an AnalysisServices
    source on ``pbiazure://<the API host>`` whose database is ``sobe_wowvirtualserver-<dataset id>``."""
    if isinstance(caller := _in_group(fake, request, group), Response):
        return caller
    if (report := cat.find(fake.catalog, "reports", item, group)) is None:
        return pbi_error(404, "PowerBIEntityNotFound")
    values = [
        {
            "datasourceType": "AnalysisServices",
            "connectionDetails": {"server": f"pbiazure://{request.host}", "database": f"{MODEL_DATABASE}{model}"},
            "datasourceId": str(uuid.uuid5(uuid.NAMESPACE_URL, f"{report['id']}/{model}")),
            "gatewayId": str(uuid.uuid5(uuid.NAMESPACE_URL, "pbiazure")),
        }
        for model in report.get("semanticModels", [])
    ]
    values += copy.deepcopy(report.get("datasources", []))
    return _listing(f"groups/{report['workspaceId']}/$metadata#datasources", values)


def tiles(fake: FakeUpstream, request: Request, body: Any, group: str, item: str, tile: str | None = None) -> Response:
    if isinstance(caller := _in_group(fake, request, group), Response):
        return caller
    if (dashboard := cat.find(fake.catalog, "dashboards", item, group)) is None:
        return pbi_error(404, "PowerBIEntityNotFound")
    g = dashboard["workspaceId"]
    chosen = [t for t in dashboard.get("tiles", []) if tile is None or same(t["id"], tile)]
    values = [_tile_view(t, dashboard["id"], g) for t in chosen]
    if tile is None:
        return _listing(f"groups/{g}/$metadata#tiles", values)
    return json_response(200, values[0]) if values else pbi_error(404, "PowerBIEntityNotFound")


def _profile(fake: FakeUpstream, principal: str) -> dict[str, str]:
    profile = fake.profiles[principal.lower()]
    return {"id": profile["id"], "displayName": profile["displayName"]}


def group_users(fake: FakeUpstream, request: Request, body: Any, group: str) -> Response:
    if isinstance(caller := _in_group(fake, request, group), Response):
        return caller
    ws = cat.workspace(fake.catalog, group) or {}
    values = [
        {"identifier": principal, "principalType": "User" if "@" in principal else "App", "groupUserAccessRight": role}
        | ({"emailAddress": principal, "displayName": principal.partition("@")[0]} if "@" in principal else {})
        | ({"profile": _profile(fake, principal)} if principal.lower() in fake.profiles else {})
        for principal, role in ws.get("members", cat.DEFAULT_MEMBERS).items()
    ]
    return _listing(f"groups/{ws['id']}/$metadata#users", _page(request, values))


# -- embed tokens --------------------------------------------------------------------------------------------


def _invalid(message: str) -> Response:
    return pbi_error(400, "InvalidRequest", message)


def _validated(body: Any, schema: dict[str, Any]) -> Response | None:
    """400 InvalidRequest for a body that breaks the published request schema."""
    error = schema_error(body, schema, "request") if body is not None else "The request body must be JSON"
    if error is None and body.get("lifetimeInMinutes", 1) <= 0:
        error = "'request.lifetimeInMinutes' must be a positive integer"
    return None if error is None else _invalid(error)


def _identity_error(
    fake: FakeUpstream, identities: list[dict[str, Any]], dataset_ids: list[str], paginated: list[str] | None = None
) -> str | None:
    """Why Power BI refuses these effective identities for a token on these datasets (and paginated reports),
    or None."""
    wanted = {d.lower(): d for d in dataset_ids}
    pages = {r.lower() for r in paginated or []}
    for identity in identities:
        if stray_reports := [r for r in identity.get("reports", []) if r.lower() not in pages]:
            return f"Report {stray_reports[0]} of the effective identity is not a paginated report of the token"
        username, roles = identity.get("username"), identity.get("roles", [])
        if username is None and "identityBlob" not in identity:
            return "An effective identity needs a username or an identityBlob"
        if username is not None and (len(username) > 256 or not username.isascii() or " " in username):
            return "The effective identity's username must be at most 256 ASCII characters, without spaces"
        if len(roles) > MAX_ITEMS or any(len(r) > MAX_ITEMS or "," in r for r in roles):
            return f"An effective identity takes at most {MAX_ITEMS} roles of at most {MAX_ITEMS} characters, no commas"
        if stray := [d for d in identity["datasets"] if d.lower() not in wanted]:
            return f"Dataset {stray[0]} of the effective identity is not one of the token's datasets"
    for key, dataset_id in wanted.items():
        dataset = cat.find(fake.catalog, "datasets", dataset_id) or {}
        given = [i for i in identities if key in {d.lower() for d in i["datasets"]}]
        required = dataset.get("isEffectiveIdentityRequired", False)
        if len(given) > 1:
            return f"More than one effective identity for dataset {dataset_id}"
        if given and not required:
            return NO_IDENTITY_WANTED.format(dataset_id)
        if required and not given:
            return IDENTITY_REQUIRED.format(dataset_id)
        roles = given[0].get("roles", []) if given else []
        if given and dataset.get("isEffectiveIdentityRolesRequired") and not roles:
            return ROLES_REQUIRED.format(dataset_id)
        if unknown := [r for r in roles if r not in dataset.get("roles", [])]:
            return f"Role '{unknown[0]}' doesn't exist in dataset {dataset_id}"
    return None


def _issue(
    fake: FakeUpstream,
    bearer: IssuedAccessToken,
    body: dict[str, Any],
    kind: str,
    datasets: list[str],
    workspaces: list[str],
    paginated: list[str] | None = None,
) -> Response:
    """Apply the identity rules and the trial quota, then answer a new embed token."""
    identities = body.get("identities", [])
    if (error := _identity_error(fake, identities, datasets, paginated)) is not None:
        return _invalid(error)
    shared = any(not (cat.workspace(fake.catalog, w) or {}).get("isOnDedicatedCapacity") for w in workspaces)
    if shared and fake.trial_tokens_left is not None:
        if fake.trial_tokens_left <= 0:
            return pbi_error(403, TRIAL_QUOTA_CODE, TRIAL_QUOTA_MESSAGE)
        fake.trial_tokens_left -= 1
    # An embed token never outlives the Entra token that requested it.
    minutes = body.get("lifetimeInMinutes", fake.embed_token_default_minutes)
    expires_at = min(fake.clock() + minutes * 60, bearer.expires_at)
    token, token_id, expiration = "H4sI" + secrets.token_urlsafe(40), str(uuid.uuid4()), iso(expires_at)
    fake.embed_tokens[token] = IssuedEmbedToken(
        token_id,
        expires_at,
        expiration,
        copy.deepcopy(body),
        bearer.principal,
        kind,
        tuple(datasets),
        tuple(copy.deepcopy(identities)),
    )
    return json_response(
        200,
        {"@odata.context": _GENERATE_TOKEN_CONTEXT, "token": token, "tokenId": token_id, "expiration": expiration},
    )


def generate_v2(fake: FakeUpstream, request: Request, body: Any) -> Response:
    if isinstance(bearer := _caller(fake, request), Response):
        return bearer
    if (invalid := _validated(body, _V2_SCHEMA)) is not None:
        return invalid
    reports, datasets, targets = (body.get(k, []) for k in ("reports", "datasets", "targetWorkspaces"))
    if not reports and not datasets:
        return _invalid("At least one report or dataset is required")
    if too_many := [k for k in ("reports", "datasets", "targetWorkspaces") if len(body.get(k, [])) > MAX_ITEMS]:
        return _invalid(f"At most {MAX_ITEMS} {too_many[0]} can be in one token")
    found = [cat.find(fake.catalog, "reports", r["id"]) for r in reports]
    found += [cat.find(fake.catalog, "datasets", d["id"]) for d in datasets]
    if any(f is None for f in found):
        return pbi_error(404, "PowerBIEntityNotFound")
    workspaces = [f["workspaceId"] for f in found if f is not None]
    if refused := _refusal(fake, bearer, workspaces + [w["id"] for w in targets]):
        return refused
    # A V2 token grants nothing implicitly: a report can only load data if its dataset is granted by the same
    # token, so the service refuses a report whose dataset is missing from "datasets".
    granted = {d["id"].lower() for d in datasets}
    read_only = {d["id"].lower() for d in datasets if d.get("xmlaPermissions") == "ReadOnly"}
    paginated = []
    for r, report in zip(reports, found, strict=False):
        if report is None or "datasetId" not in report:  # a paginated report has no dataset
            if r.get("allowEdit"):
                return _invalid(f"Paginated report {r['id']} cannot be edited")
            paginated.append(r["id"])
            # It queries its semantic models over XMLA: each must be granted read-only XMLA access.
            for model in (report or {}).get("semanticModels", []):
                if model.lower() not in read_only:
                    return _invalid(
                        f"Dataset {model} of paginated report {r['id']} must be listed in 'datasets' with "
                        "xmlaPermissions ReadOnly"
                    )
                if error := _paginated_identity_error(fake, body.get("identities", []), model, r["id"]):
                    return _invalid(error)
            continue
        if report["datasetId"].lower() not in granted:
            return _invalid(f"Dataset {report['datasetId']} of report {r['id']} must be listed in 'datasets'")
    return _issue(fake, bearer, body, "v2", [d["id"] for d in datasets], workspaces, paginated)


def _paginated_identity_error(fake: FakeUpstream, identities: list[dict[str, Any]], model: str, report: str) -> str:
    """A paginated report on a model that requires an identity must be named in that identity's reports."""
    if not (cat.find(fake.catalog, "datasets", model) or {}).get("isEffectiveIdentityRequired"):
        return ""
    for identity in identities:
        if model.lower() in {d.lower() for d in identity["datasets"]}:
            if report.lower() in {r.lower() for r in identity.get("reports", [])}:
                return ""
            return f"The effective identity for dataset {model} must list paginated report {report} in 'reports'"
    return ""  # no identity at all: the dataset rules answer that


def generate_in_group(
    fake: FakeUpstream, request: Request, body: Any, group: str, kind: str, item: str = "", tile: str = ""
) -> Response:
    """Reports / Dashboards / Tiles GenerateTokenInGroup and Reports GenerateTokenForCreateInGroup (kind
    "create"), all with a GenerateTokenRequest body."""
    if isinstance(bearer := _in_group(fake, request, group), Response):
        return bearer
    if (invalid := _validated(body, _V1_SCHEMA)) is not None:
        return invalid
    level = body.get("accessLevel", _LEVELS[kind][0])
    if level not in _LEVELS[kind]:
        return _invalid(f"accessLevel {level} is not supported by this API")
    if kind in ("dashboards", "tiles") and ({"allowSaveAs", "datasetId"} & set(body)):
        return _invalid("allowSaveAs and datasetId apply to reports only")
    target = cat.find(fake.catalog, "dashboards" if kind == "tiles" else kind, item, group) if item else {}
    if kind == "tiles":
        target = next((t for t in (target or {}).get("tiles", []) if same(t["id"], tile)), None)
    if target is None:
        return pbi_error(404, "PowerBIEntityNotFound")
    workspaces = [group]
    if level == "Create":
        if "datasetId" not in body:
            return _invalid("'request.datasetId' is required for accessLevel Create")
        if (dataset := cat.find(fake.catalog, "datasets", body["datasetId"])) is None:
            return pbi_error(404, "PowerBIEntityNotFound")
        workspaces.append(dataset["workspaceId"])
        if refused := _refusal(fake, bearer, workspaces):
            return refused
        datasets = [dataset["id"]]
    elif "datasetId" in body:
        return _invalid("'request.datasetId' applies to accessLevel Create only")
    elif kind == "reports" and level == "Edit" and "datasetId" not in target:
        return _invalid(f"Paginated report {target['id']} cannot be edited")
    else:
        tiles_of = target.get("tiles", [target])  # a dashboard's tiles; else the tile or report itself
        datasets = list({t["datasetId"].lower(): t["datasetId"] for t in tiles_of if "datasetId" in t}.values())
    return _issue(fake, bearer, body, kind, datasets, workspaces)
