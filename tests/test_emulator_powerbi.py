"""The emulator's Power BI: catalogue reads and the service's rules, driven by real msal tokens and requests."""

from __future__ import annotations

import time
from typing import Any

import pytest
import requests

from emulator import (
    CLIENT_ID,
    DATASET_ID,
    IDENTITY_DATASET_ID,
    IDENTITY_REPORT_ID,
    OTHER_DATASET_ID,
    OTHER_REPORT_ID,
    OTHER_WORKSPACE_ID,
    PAGINATED_REPORT_ID,
    PLAIN_TILE_ID,
    REPORT_ID,
    RLS_DASHBOARD_ID,
    RLS_DATASET_ID,
    RLS_REPORT_ID,
    RLS_TILE_ID,
    TILE_ID,
    TRIAL_QUOTA_CODE,
    UNSHARED_REPORT_ID,
    UNSHARED_WORKSPACE_ID,
    USERNAME,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator import catalog as cat
from tests.conftest import PASSWORD
from tests.test_emulator_smoke import PBI_SCOPE, confidential

GROUP = f"/groups/{WORKSPACE_ID}"


def app_auth(fake: FakeUpstream) -> dict[str, str]:
    """A service principal's bearer header, from real MSAL."""
    return {"Authorization": f"Bearer {confidential(fake).acquire_token_for_client([PBI_SCOPE])['access_token']}"}


def user_auth(fake: FakeUpstream) -> dict[str, str]:
    """The master user's bearer header (confidential client, password grant), from real MSAL."""
    result = confidential(fake).acquire_token_by_username_password(USERNAME, PASSWORD, scopes=[PBI_SCOPE])
    return {"Authorization": f"Bearer {result['access_token']}"}


def pbi(fake: FakeUpstream, auth: dict[str, str], path: str, body: Any = None) -> requests.Response:
    """GET, or POST ``body``, to the fake's Power BI; every answer carries a RequestId."""
    url = f"{fake.base_url}/v1.0/myorg{path}"
    response = requests.request("GET" if body is None else "POST", url, json=body, headers=auth, timeout=5)
    assert response.headers["RequestId"] == fake.issued_request_ids[-1]
    return response


def refusal(response: requests.Response) -> tuple[int, str, str]:
    error = response.json()["error"]
    return response.status_code, error["code"], error.get("message", "")


def v2(*reports: str, datasets: tuple[str, ...] = (), **more: Any) -> dict[str, Any]:
    return {"reports": [{"id": r} for r in reports], "datasets": [{"id": d} for d in datasets], **more}


def identity(*datasets: str, username: str = "alice@contoso.com", **more: Any) -> dict[str, Any]:
    return {"username": username, "datasets": list(datasets), **more}


# --- reads --------------------------------------------------------------------------------------------------


def test_groups_are_the_callers_workspaces(fake: FakeUpstream) -> None:
    for auth in (app_auth(fake), user_auth(fake)):
        answer = pbi(fake, auth, "/groups").json()
        assert answer["@odata.context"].endswith("/v1.0/myorg/$metadata#groups")
        assert [(g["id"], g["isOnDedicatedCapacity"], g["type"]) for g in answer["value"]] == [
            (WORKSPACE_ID, False, "Workspace"),
            (OTHER_WORKSPACE_ID, True, "Workspace"),
        ]
    assert [g["name"] for g in pbi(fake, auth, "/groups?$top=1&$skip=1").json()["value"]] == ["Finance"]


def test_reports_dashboards_tiles_datasets_and_users(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    reports = {r["id"]: r for r in pbi(fake, auth, f"{GROUP}/reports").json()["value"]}
    assert reports[REPORT_ID]["datasetId"] == DATASET_ID
    assert reports[REPORT_ID]["embedUrl"].startswith(f"https://app.powerbi.com/reportEmbed?reportId={REPORT_ID}&")
    paginated = reports[PAGINATED_REPORT_ID]
    assert paginated["reportType"] == "PaginatedReport" and "datasetId" not in paginated
    assert paginated["embedUrl"].startswith(f"https://app.powerbi.com/rdlEmbed?reportId={PAGINATED_REPORT_ID}&")
    dashboards = pbi(fake, auth, f"{GROUP}/dashboards").json()["value"]
    assert {d["id"] for d in dashboards} == {RLS_DASHBOARD_ID, "69ffaa6c-b36d-4d01-96f5-1ed67c64d4af"}

    tiles = pbi(fake, auth, f"{GROUP}/dashboards/{RLS_DASHBOARD_ID}/tiles").json()["value"]
    assert [(t["id"], t["reportId"], t["datasetId"]) for t in tiles] == [
        (RLS_TILE_ID, RLS_REPORT_ID, RLS_DATASET_ID),
        (PLAIN_TILE_ID, REPORT_ID, DATASET_ID),
    ]
    tile = pbi(fake, auth, f"{GROUP}/dashboards/{RLS_DASHBOARD_ID}/tiles/{RLS_TILE_ID}").json()
    assert tile["embedUrl"] == (
        f"https://app.powerbi.com/embed?dashboardId={RLS_DASHBOARD_ID}&tileId={RLS_TILE_ID}&groupId={WORKSPACE_ID}"
    )
    assert pbi(fake, auth, f"{GROUP}/dashboards/{RLS_DASHBOARD_ID}/tiles/{TILE_ID}").status_code == 404

    flags = ("isEffectiveIdentityRequired", "isEffectiveIdentityRolesRequired")
    for dataset, expected in (
        (RLS_DATASET_ID, (True, True)),
        (IDENTITY_DATASET_ID, (True, False)),
        (DATASET_ID, (False, False)),
    ):
        answer = pbi(fake, auth, f"{GROUP}/datasets/{dataset}").json()
        assert tuple(answer[f] for f in flags) == expected

    users = pbi(fake, auth, f"{GROUP}/users").json()["value"]
    assert {(u["identifier"], u["principalType"], u["groupUserAccessRight"]) for u in users} >= {
        (USERNAME, "User", "Admin"),
        (CLIENT_ID, "App", "Member"),
    }


def test_the_list_calls_carry_the_fields_power_bi_sends(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    report_fields = {"id", "reportType", "name", "webUrl", "embedUrl", "datasetId", "datasetWorkspaceId"}
    reports = pbi(fake, auth, f"{GROUP}/reports").json()
    assert reports["@odata.context"].endswith(f"/groups/{WORKSPACE_ID}/$metadata#reports")
    plain = next(r for r in reports["value"] if r["id"] == REPORT_ID)
    assert report_fields <= plain.keys() and plain["datasetWorkspaceId"] == WORKSPACE_ID
    datasets = {d["id"]: d for d in pbi(fake, auth, f"{GROUP}/datasets").json()["value"]}
    assert {"isEffectiveIdentityRequired", "isEffectiveIdentityRolesRequired", "createReportEmbedURL"} <= (
        datasets[RLS_DATASET_ID].keys()
    )
    assert OTHER_DATASET_ID not in datasets  # declared by the Finance workspace, not implied here
    dashboards = pbi(fake, auth, f"{GROUP}/dashboards").json()["value"]
    assert all({"id", "displayName", "embedUrl", "webUrl"} <= d.keys() for d in dashboards)
    by_id = pbi(fake, auth, f"/datasets/{OTHER_DATASET_ID}").json()
    assert by_id["id"] == OTHER_DATASET_ID and "isEffectiveIdentityRequired" in by_id


# --- who may call -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "expected"), [("TokenExpired", "TokenExpired"), ("revoked", "PowerBINotAuthorizedException")]
)
def test_a_token_valid_by_time_can_be_rejected(fake: FakeUpstream, code: str, expected: str) -> None:
    auth = app_auth(fake)
    assert pbi(fake, auth, f"{GROUP}/reports").status_code == 200

    fake.reject_token(auth["Authorization"].removeprefix("Bearer "), code)

    answer = pbi(fake, auth, f"{GROUP}/reports")
    assert (answer.status_code, answer.json()["error"]["code"]) == (401, expected)
    assert pbi(fake, app_auth(fake), f"{GROUP}/reports").status_code == 200  # a new token is accepted
    fake.clear_faults()
    assert pbi(fake, auth, f"{GROUP}/reports").status_code == 200


def test_a_non_member_is_refused_with_401(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    not_member = (401, "PowerBINotAuthorizedException", "")
    assert refusal(pbi(fake, auth, f"/groups/{UNSHARED_WORKSPACE_ID}/reports/{UNSHARED_REPORT_ID}")) == not_member
    assert refusal(pbi(fake, auth, "/GenerateToken", v2(UNSHARED_REPORT_ID))) == not_member

    fake.set_member(WORKSPACE_ID, CLIENT_ID, None)
    assert refusal(pbi(fake, auth, f"{GROUP}/reports/{REPORT_ID}")) == not_member
    assert WORKSPACE_ID not in {g["id"] for g in pbi(fake, auth, "/groups").json()["value"]}
    fake.reset()  # restores the catalogue
    assert pbi(fake, auth, f"{GROUP}/reports/{REPORT_ID}").status_code == 200


def test_the_tenant_switch_refuses_service_principals_only(fake: FakeUpstream) -> None:
    app, user = app_auth(fake), user_auth(fake)
    fake.service_principals_allowed = False
    refused = pbi(fake, app, "/groups")
    assert refusal(refused) == (401, "PowerBINotAuthorizedException", "")
    assert refused.headers["X-PowerBI-Error-Info"] == "ServicePrincipalIsNotAllowedByTenantAdminSwitch"
    assert pbi(fake, user, "/groups").status_code == 200


def test_trial_tokens_run_out_on_shared_capacity_only(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    fake.trial_tokens_left = 1
    shared = v2(REPORT_ID, datasets=(DATASET_ID,))
    assert pbi(fake, auth, "/GenerateToken", shared).status_code == 200
    status, code, message = refusal(pbi(fake, auth, "/GenerateToken", shared))
    assert (status, code) == (403, TRIAL_QUOTA_CODE) and "shared capacity" in message
    assert pbi(fake, auth, "/GenerateToken", v2(OTHER_REPORT_ID, datasets=(OTHER_DATASET_ID,))).status_code == 200


# --- effective identities -----------------------------------------------------------------------------------

RLS = v2(RLS_REPORT_ID, datasets=(RLS_DATASET_ID,))


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (RLS, f"dataset {RLS_DATASET_ID} requires effective identity to be provided"),
        (v2(REPORT_ID, datasets=(DATASET_ID,), identities=[identity(DATASET_ID)]), "shouldn't have effective identity"),
        (RLS | {"identities": [identity(RLS_DATASET_ID)]}, "requires roles to be included"),
        (RLS | {"identities": [identity(RLS_DATASET_ID, roles=["Nobody"])]}, "Role 'Nobody' doesn't exist"),
        (RLS | {"identities": [identity(RLS_DATASET_ID, username="a b", roles=["Region"])]}, "without spaces"),
        (RLS | {"identities": [identity(RLS_DATASET_ID, username="a" * 257, roles=["Region"])]}, "at most 256"),
        (RLS | {"identities": [identity(RLS_DATASET_ID, roles=["Region,Manager"])]}, "no commas"),
        (RLS | {"identities": [identity(DATASET_ID, roles=["Region"])]}, "not one of the token's datasets"),
        (RLS | {"identities": [{"username": "alice"}]}, "'request.identities[0].datasets' is required"),
    ],
)
def test_identity_rules(fake: FakeUpstream, body: dict[str, Any], message: str) -> None:
    status, code, text = refusal(pbi(fake, app_auth(fake), "/GenerateToken", body))
    assert (status, code) == (400, "InvalidRequest") and message in text


def test_identities_go_where_required_and_are_recorded(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    alice = identity(RLS_DATASET_ID, roles=["Region"], customData="north")
    answer = pbi(fake, auth, "/GenerateToken", RLS | {"identities": [alice]})
    issued = fake.embed_tokens[answer.json()["token"]]
    assert (issued.kind, issued.datasets, issued.identities) == ("v2", (RLS_DATASET_ID,), (alice,))
    no_roles = v2(IDENTITY_REPORT_ID, datasets=(IDENTITY_DATASET_ID,), identities=[identity(IDENTITY_DATASET_ID)])
    assert pbi(fake, auth, "/GenerateToken", no_roles).status_code == 200


def test_a_dashboard_on_an_rls_and_a_plain_dataset(fake: FakeUpstream) -> None:
    auth, path = app_auth(fake), f"{GROUP}/dashboards/{RLS_DASHBOARD_ID}/GenerateToken"
    assert "requires effective identity" in refusal(pbi(fake, auth, path, {"accessLevel": "View"}))[2]
    both = {"identities": [identity(RLS_DATASET_ID, DATASET_ID, roles=["Region"])]}
    assert "shouldn't have effective identity" in refusal(pbi(fake, auth, path, both))[2]
    alice = identity(RLS_DATASET_ID, roles=["Region"])
    issued = fake.embed_tokens[pbi(fake, auth, path, {"identities": [alice]}).json()["token"]]
    assert (issued.kind, set(issued.datasets), issued.identities) == (
        "dashboards",
        {RLS_DATASET_ID, DATASET_ID},
        (alice,),
    )
    assert refusal(pbi(fake, auth, path, {"accessLevel": "Edit"}))[:2] == (400, "InvalidRequest")


def test_tiles_reports_and_create(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    tile = pbi(fake, auth, f"{GROUP}/dashboards/{RLS_DASHBOARD_ID}/tiles/{PLAIN_TILE_ID}/GenerateToken", {})
    assert fake.embed_tokens[tile.json()["token"]].datasets == (DATASET_ID,)
    rls_tile = f"{GROUP}/dashboards/{RLS_DASHBOARD_ID}/tiles/{RLS_TILE_ID}/GenerateToken"
    assert "requires effective identity" in refusal(pbi(fake, auth, rls_tile, {}))[2]

    report = f"{GROUP}/reports/{REPORT_ID}/GenerateToken"
    assert fake.embed_tokens[pbi(fake, auth, report, {"accessLevel": "Edit"}).json()["token"]].kind == "reports"
    assert "Create only" in refusal(pbi(fake, auth, report, {"accessLevel": "View", "datasetId": DATASET_ID}))[2]
    paginated = f"{GROUP}/reports/{PAGINATED_REPORT_ID}/GenerateToken"
    issued = fake.embed_tokens[pbi(fake, auth, paginated, {"accessLevel": "View"}).json()["token"]]
    assert issued.datasets == ()
    assert "cannot be edited" in refusal(pbi(fake, auth, paginated, {"accessLevel": "Edit"}))[2]

    create = f"{GROUP}/reports/GenerateToken"
    made = pbi(fake, auth, create, {"accessLevel": "Create", "datasetId": DATASET_ID})
    assert (fake.embed_tokens[made.json()["token"]].kind, fake.embed_tokens[made.json()["token"]].datasets) == (
        "create",
        (DATASET_ID,),
    )
    assert "datasetId' is required" in refusal(pbi(fake, auth, create, {"accessLevel": "Create"}))[2]
    unshared = {"accessLevel": "Create", "datasetId": "c2e4a6b8-d0f2-4a4c-8e6a-b8d0f2a4c6e8"}
    assert refusal(pbi(fake, auth, create, unshared))[0] == 401


def test_v2_limits_edit_and_target_workspaces(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    too_many = v2(*[REPORT_ID] * 51, datasets=(DATASET_ID,))
    assert "At most 50 reports" in refusal(pbi(fake, auth, "/GenerateToken", too_many))[2]
    editable = {"reports": [{"id": REPORT_ID, "allowEdit": True}], "datasets": [{"id": DATASET_ID}]}
    assert pbi(fake, auth, "/GenerateToken", editable | {"targetWorkspaces": [{"id": WORKSPACE_ID}]}).status_code == 200
    elsewhere = editable | {"targetWorkspaces": [{"id": UNSHARED_WORKSPACE_ID}]}
    assert refusal(pbi(fake, auth, "/GenerateToken", elsewhere))[0] == 401
    paginated = {"reports": [{"id": PAGINATED_REPORT_ID, "allowEdit": True}]}
    assert "cannot be edited" in refusal(pbi(fake, auth, "/GenerateToken", paginated))[2]


# --- latency and the catalogue file -------------------------------------------------------------------------


def test_latency_for_one_path(fake: FakeUpstream) -> None:
    auth = app_auth(fake)
    fake.latency_for("/dashboards", 0.2)
    started = time.monotonic()
    pbi(fake, auth, f"{GROUP}/reports")
    between = time.monotonic()
    pbi(fake, auth, f"{GROUP}/dashboards")
    assert between - started < 0.2 <= time.monotonic() - between


def test_catalogue_files_are_checked(tmp_path: Any) -> None:
    bad = {
        "workspaces": [
            {
                "id": "w",
                "name": "W",
                "reports": [{"id": "r", "name": "R", "reportType": "PaginatedReport", "datasetId": "d"}],
            }
        ]
    }
    with pytest.raises(ValueError, match="a PaginatedReport has none"):
        cat.check(bad)
    with pytest.raises(ValueError, match=r"'catalog.workspaces\[0\].members.x' must be one of Admin"):
        cat.check({"workspaces": [{"id": "w", "name": "W", "members": {"x": "Owner"}}]})
    with pytest.raises(ValueError, match=r"Unknown property 'config\.colour'"):
        FakeUpstream().configure({"colour": "blue"})
