"""The emulator's service principal profiles, the workspaces they own, AssignToCapacity and imports, driven by real
msal tokens and requests."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import pytest
import requests

from emulator import CAPACITY_ID, CLIENT_ID, REPORT_ID, WORKSPACE_ID, FakeUpstream
from tests.test_emulator_powerbi import app_auth, pbi, refusal, user_auth

PROFILE = "X-PowerBI-Profile-Id"
NOT_AUTHORIZED = (401, "PowerBINotAuthorizedException", "")


@pytest.fixture(autouse=True)
def strict_profiles(fake: FakeUpstream) -> None:
    """As Power BI: a profile the emulator does not know is refused."""
    fake.strict_profiles = True


def call(fake: FakeUpstream, method: str, auth: dict[str, str], path: str, **kwargs: Any) -> requests.Response:
    response = requests.request(method, f"{fake.base_url}/v1.0/myorg{path}", headers=auth, timeout=5, **kwargs)
    assert response.headers["RequestId"] == fake.issued_request_ids[-1]
    return response


def as_profile(auth: dict[str, str], profile_id: str) -> dict[str, str]:
    return auth | {PROFILE: profile_id}


def pbix() -> bytes:
    """A PBIX is a zip archive; the emulator checks no more than that."""
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        archive.writestr("Version", "1.28")
    return buffer.getvalue()


def new_workspace(fake: FakeUpstream, auth: dict[str, str], name: str) -> str:
    answer = call(fake, "POST", auth, "/groups?workspaceV2=True", json={"name": name})
    assert answer.status_code == 200
    return str(answer.json()["id"])


def test_profiles_are_created_listed_and_deleted_by_their_service_principal(fake: FakeUpstream) -> None:
    app = app_auth(fake)
    made = call(fake, "POST", app, "/profiles", json={"displayName": "Contoso"})
    assert made.status_code == 200
    profile = made.json()
    assert profile["displayName"] == "Contoso" and profile["@odata.context"].endswith("$metadata#profiles/$entity")
    call(fake, "POST", app, "/profiles", json={"displayName": "Contoso"})  # display names need not be unique
    listed = call(fake, "GET", app, "/profiles").json()["value"]
    assert [p["displayName"] for p in listed] == ["Contoso", "Contoso"] and profile["id"] in {p["id"] for p in listed}

    assert call(fake, "DELETE", app, f"/profiles/{profile['id']}").status_code == 200
    assert profile["id"] not in {p["id"] for p in call(fake, "GET", app, "/profiles").json()["value"]}
    assert refusal(call(fake, "DELETE", app, f"/profiles/{profile['id']}"))[:2] == (404, "PowerBIEntityNotFound")


def test_only_a_service_principal_has_profiles(fake: FakeUpstream) -> None:
    user = user_auth(fake)
    assert refusal(call(fake, "POST", user, "/profiles", json={"displayName": "x"})) == NOT_AUTHORIZED
    assert refusal(call(fake, "GET", user, "/profiles")) == NOT_AUTHORIZED
    other_apps = fake.add_profile("Fabrikam", owner="someone-else")
    assert refusal(call(fake, "GET", as_profile(app_auth(fake), other_apps), "/groups")) == NOT_AUTHORIZED
    mine = fake.add_profile("Contoso")
    assert refusal(call(fake, "GET", as_profile(user, mine), "/groups")) == NOT_AUTHORIZED
    assert refusal(call(fake, "GET", as_profile(app_auth(fake), "unknown"), "/groups")) == NOT_AUTHORIZED
    assert refusal(call(fake, "POST", app_auth(fake), "/profiles", json={"name": "x"}))[:2] == (400, "InvalidRequest")


def test_a_profiles_workspace_is_visible_only_with_its_header(fake: FakeUpstream) -> None:
    app, contoso, fabrikam = app_auth(fake), fake.add_profile("Contoso"), fake.add_profile("Fabrikam")
    made = call(fake, "POST", as_profile(app, contoso), "/groups?workspaceV2=True", json={"name": "Contoso"})
    group = made.json()
    assert made.status_code == 200 and group["@odata.context"].endswith("$metadata#groups/$entity")
    assert (group["name"], group["isOnDedicatedCapacity"], group["isReadOnly"]) == ("Contoso", False, False)

    mine = call(fake, "GET", as_profile(app, contoso), "/groups").json()["value"]
    assert [g["id"] for g in mine] == [group["id"]]  # the app's own workspaces are not the profile's
    assert group["id"] not in {g["id"] for g in call(fake, "GET", app, "/groups").json()["value"]}
    assert call(fake, "GET", as_profile(app, fabrikam), "/groups").json()["value"] == []
    users = f"/groups/{group['id']}/users"
    for outsider in (app, as_profile(app, fabrikam), user_auth(fake)):
        assert refusal(call(fake, "GET", outsider, users)) == NOT_AUTHORIZED
    member = call(fake, "GET", as_profile(app, contoso), users).json()["value"]
    assert member == [
        {
            "identifier": contoso,
            "principalType": "App",
            "groupUserAccessRight": "Admin",
            "profile": {"id": contoso, "displayName": "Contoso"},
        }
    ]
    # And the other way: the profile is not a member of the app's workspaces.
    assert refusal(call(fake, "GET", as_profile(app, contoso), f"/groups/{WORKSPACE_ID}/reports")) == NOT_AUTHORIZED


def test_groups_filter_by_name_or_id(fake: FakeUpstream) -> None:
    app = app_auth(fake)
    assert [g["id"] for g in call(fake, "GET", app, "/groups?$filter=name eq 'sales'").json()["value"]] == [
        WORKSPACE_ID
    ]
    assert [g["name"] for g in call(fake, "GET", app, f"/groups?$filter=id eq '{WORKSPACE_ID}'").json()["value"]] == [
        "Sales"
    ]
    assert call(fake, "GET", app, "/groups?$filter=name eq 'Nobody'").json()["value"] == []
    assert refusal(call(fake, "GET", app, "/groups?$filter=contains(name,'S')"))[:2] == (400, "InvalidRequest")


def test_workspace_names_are_unique_in_the_tenant(fake: FakeUpstream) -> None:
    app = app_auth(fake)
    answer = call(
        fake, "POST", as_profile(app, fake.add_profile("x")), "/groups?workspaceV2=True", json={"name": "SALES"}
    )
    assert refusal(answer)[:2] == (409, "PowerBIEntityAlreadyExists")
    assert refusal(call(fake, "POST", app, "/groups?workspaceV2=True", json={"title": "x"}))[:2] == (
        400,
        "InvalidRequest",
    )


def test_assign_to_capacity_and_back_to_shared(fake: FakeUpstream) -> None:
    auth = as_profile(app_auth(fake), fake.add_profile("Contoso"))
    group = new_workspace(fake, auth, "Contoso")
    assign = f"/groups/{group}/AssignToCapacity"
    assert call(fake, "POST", auth, assign, json={"capacityId": CAPACITY_ID.upper()}).status_code == 200
    [listed] = call(fake, "GET", auth, "/groups").json()["value"]
    assert (listed["isOnDedicatedCapacity"], listed["capacityId"]) == (True, CAPACITY_ID)
    unknown = {"capacityId": "11111111-2222-3333-4444-555555555555"}
    assert refusal(call(fake, "POST", auth, assign, json=unknown))[:2] == (404, "PowerBIEntityNotFound")
    shared = {"capacityId": "00000000-0000-0000-0000-000000000000"}
    assert call(fake, "POST", auth, assign, json=shared).status_code == 200
    [listed] = call(fake, "GET", auth, "/groups").json()["value"]
    assert listed["isOnDedicatedCapacity"] is False and "capacityId" not in listed
    # Only the workspace's Admin: the app is not even a member of the profile's workspace.
    assert refusal(call(fake, "POST", app_auth(fake), assign, json={"capacityId": CAPACITY_ID})) == NOT_AUTHORIZED
    assert refusal(call(fake, "POST", app_auth(fake), f"/groups/{WORKSPACE_ID}/AssignToCapacity", json=shared)) == (
        NOT_AUTHORIZED  # a Member of Sales, not its Admin
    )


def test_an_import_publishes_then_succeeds_with_a_report_and_its_dataset(fake: FakeUpstream) -> None:
    auth = as_profile(app_auth(fake), fake.add_profile("Contoso"))
    group = new_workspace(fake, auth, "Contoso")
    fake.import_publishing_polls = 2
    posted = call(
        fake,
        "POST",
        auth,
        f"/groups/{group}/imports?datasetDisplayName=Sales.pbix",
        files={"file": ("Sales.pbix", pbix())},
    )
    assert posted.status_code == 202
    import_path = f"/groups/{group}/imports/{posted.json()['id']}"
    states = [call(fake, "GET", auth, import_path).json() for _ in range(3)]
    assert [s["importState"] for s in states] == ["Publishing", "Publishing", "Succeeded"]
    assert states[0]["reports"] == [] and states[0]["name"] == "Sales.pbix"
    [report], [dataset] = states[2]["reports"], states[2]["datasets"]
    assert (report["name"], report["datasetId"], dataset["name"]) == ("Sales", dataset["id"], "Sales")
    listed = call(fake, "GET", auth, f"/groups/{group}/reports").json()["value"]
    assert [(r["id"], r["datasetId"]) for r in listed] == [(report["id"], dataset["id"])]
    token = call(
        fake,
        "POST",
        auth,
        "/GenerateToken",
        json={"reports": [{"id": report["id"]}], "datasets": [{"id": dataset["id"]}]},
    )
    assert token.status_code == 200 and fake.embed_tokens[token.json()["token"]].principal == auth[PROFILE]
    # Another app (or the app itself, without the profile) cannot read the import.
    assert refusal(call(fake, "GET", app_auth(fake), import_path)) == NOT_AUTHORIZED


def test_imports_refuse_what_is_not_a_pbix_and_can_fail(fake: FakeUpstream) -> None:
    auth = as_profile(app_auth(fake), fake.add_profile("Contoso"))
    group = new_workspace(fake, auth, "Contoso")
    imports = f"/groups/{group}/imports?datasetDisplayName=Sales.pbix"
    text = call(fake, "POST", auth, imports, files={"file": ("Sales.pbix", b"not a zip")})
    assert refusal(text)[:2] == (400, "RequestedFileIsEncryptedOrCorrupted")
    assert refusal(call(fake, "POST", auth, f"/groups/{group}/imports", files={"f": ("a", pbix())}))[0] == 400
    assert refusal(call(fake, "POST", auth, imports, json={"file": "x"}))[0] == 400

    fake.import_publishing_polls, fake.import_outcome = 0, "Failed"
    posted = call(fake, "POST", auth, imports, files={"file": ("Sales.pbix", pbix())})
    failed = call(fake, "GET", auth, f"/groups/{group}/imports/{posted.json()['id']}").json()
    assert (
        failed["importState"] == "Failed" and call(fake, "GET", auth, f"/groups/{group}/reports").json()["value"] == []
    )


def test_deleting_a_workspace_needs_its_admin(fake: FakeUpstream) -> None:
    app = app_auth(fake)
    auth = as_profile(app, fake.add_profile("Contoso"))
    group = new_workspace(fake, auth, "Contoso")
    assert refusal(call(fake, "DELETE", app, f"/groups/{group}")) == NOT_AUTHORIZED
    assert call(fake, "DELETE", auth, f"/groups/{group}").status_code == 200
    assert call(fake, "GET", auth, "/groups").json()["value"] == []
    assert refusal(call(fake, "DELETE", auth, f"/groups/{group}"))[:2] == (404, "PowerBIEntityNotFound")


def test_callers_without_a_profile_are_served_as_before(fake: FakeUpstream) -> None:
    fake.add_profile("Contoso")
    app = app_auth(fake)
    assert pbi(fake, app, f"/groups/{WORKSPACE_ID}/reports/{REPORT_ID}").status_code == 200
    assert len(pbi(fake, app, "/groups").json()["value"]) == 2
    assert len(pbi(fake, user_auth(fake), "/groups").json()["value"]) == 2
    fake.reset()  # profiles, imports and the workspaces they made are forgotten
    assert fake.profiles == {} and fake.imports == {} and fake.capacities == {CAPACITY_ID}
    assert CLIENT_ID in {p.lower() for p in fake.catalog["workspaces"][0]["members"]}


def test_a_profile_can_be_made_a_member_of_existing_workspaces(fake: FakeUpstream) -> None:
    """What a test of the embed path sets up: a known profile id, Admin of a catalogue workspace."""
    profile = fake.add_profile("Contoso", profile_id="A0A0A0A0-1111-4111-8111-000000000001", workspaces=[WORKSPACE_ID])
    assert profile == "a0a0a0a0-1111-4111-8111-000000000001"
    auth = as_profile(app_auth(fake), profile.upper())
    assert call(fake, "GET", auth, f"/groups/{WORKSPACE_ID}/reports/{REPORT_ID}").status_code == 200
    assert [g["id"] for g in call(fake, "GET", auth, "/groups").json()["value"]] == [WORKSPACE_ID]


def test_without_strict_profiles_an_unknown_profile_acts_with_the_apps_memberships(fake: FakeUpstream) -> None:
    fake.strict_profiles = False
    app = app_auth(fake)
    unknown = as_profile(app, "a0a0a0a0-1111-4111-8111-000000000001")
    assert call(fake, "GET", unknown, f"/groups/{WORKSPACE_ID}/reports/{REPORT_ID}").status_code == 200
    known = fake.add_profile("Contoso")  # a profile the emulator knows stays strict
    assert refusal(call(fake, "GET", as_profile(app, known), f"/groups/{WORKSPACE_ID}/reports")) == NOT_AUTHORIZED
    assert refusal(
        call(fake, "GET", as_profile(user_auth(fake), "a0a0a0a0-1111-4111-8111-000000000001"), "/groups")
    ) == (
        NOT_AUTHORIZED  # never for a user
    )


def test_a_config_file_may_make_profiles_strict() -> None:
    emulator = FakeUpstream().configure({"strict_profiles": True})
    emulator.strict_profiles = False
    emulator.reset()  # back to the configured value
    assert emulator.strict_profiles is True
