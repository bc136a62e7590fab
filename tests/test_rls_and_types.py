"""Row-level security from a trusted identity, and every embeddable type, against the emulator's Power BI rules."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from typing import Any

import pytest

import function_app
from emulator import (
    DASHBOARD_ID,
    DATASET_ID,
    PAGINATED_REPORT_ID,
    PLAIN_TILE_ID,
    REPORT_ID,
    RLS_DASHBOARD_ID,
    RLS_DATASET_ID,
    RLS_REPORT_ID,
    RLS_TILE_ID,
    TILE_ID,
    WORKSPACE_ID,
    FakeUpstream,
)

ALICE = {"X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com", "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}
BOB = {"X-MS-CLIENT-PRINCIPAL-NAME": "bob@contoso.com", "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def outcome(response: Any) -> tuple[int, str]:
    return response.status_code, body(response).get("error", {}).get("code", "")


def generate_bodies(fake: FakeUpstream) -> list[Any]:
    return [r.json for r in fake.calls("POST", "GenerateToken")]


def principal(claims: dict[str, str]) -> str:
    encoded = json.dumps({"auth_typ": "aad", "claims": [{"typ": k, "val": v} for k, v in claims.items()]})
    return base64.b64encode(encoded.encode()).decode()


@pytest.fixture
def rls(env: dict[str, str]) -> dict[str, str]:
    """Row-level security from App Service Authentication's principal."""
    env.update(
        {
            "POWERBI_RLS_USERNAME_SOURCE": "principal",
            "POWERBI_RLS_ROLES": "Region",
            "WEBSITE_AUTH_ENABLED": "True",
        }
    )
    return env


# --- row-level security -------------------------------------------------------------------------------------


def test_an_rls_report_gets_the_signed_in_users_identity(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    response = call(f"/api/embed/reports/{RLS_REPORT_ID}", ALICE)

    assert response.status_code == 200
    assert generate_bodies(fake) == [
        {
            "reports": [{"id": RLS_REPORT_ID}],
            "datasets": [{"id": RLS_DATASET_ID}],
            "identities": [{"username": "alice@contoso.com", "roles": ["Region"], "datasets": [RLS_DATASET_ID]}],
        }
    ]
    assert fake.embed_tokens[body(response)["accessToken"]].body["identities"][0]["username"] == "alice@contoso.com"


def test_without_a_signed_in_user_it_is_401_and_nothing_is_asked(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    assert outcome(call(f"/api/embed/reports/{RLS_REPORT_ID}")) == (401, "unauthenticated")
    assert fake.requests == []


def test_a_plain_dataset_gets_no_identity(call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]) -> None:
    assert call(f"/api/embed/reports/{REPORT_ID}", ALICE).status_code == 200
    assert "identities" not in generate_bodies(fake)[0]


def test_an_rls_dataset_without_an_identity_source_is_a_configuration_error(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    response = call(f"/api/embed/reports/{RLS_REPORT_ID}", ALICE)

    assert outcome(response) == (500, "configuration_error")
    assert "POWERBI_RLS_USERNAME_SOURCE" in body(response)["error"]["message"]
    assert not fake.calls("POST", "GenerateToken")


def test_roles_required_without_roles_is_a_configuration_error(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    del rls["POWERBI_RLS_ROLES"]

    response = call(f"/api/embed/reports/{RLS_REPORT_ID}", ALICE)

    assert outcome(response) == (500, "configuration_error")
    assert "POWERBI_RLS_ROLES" in body(response)["error"]["message"]
    assert not fake.calls("POST", "GenerateToken")


def test_principal_headers_are_trusted_only_behind_app_service_authentication(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    del rls["WEBSITE_AUTH_ENABLED"]

    response = call(f"/api/embed/reports/{RLS_REPORT_ID}", ALICE)

    assert outcome(response) == (500, "configuration_error")
    assert "App Service Authentication" in body(response)["error"]["message"]
    assert fake.requests == []


def test_username_and_custom_data_from_claims(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    rls.update(
        {"POWERBI_RLS_USERNAME_CLAIM": "preferred_username", "POWERBI_RLS_CUSTOM_DATA_CLAIM": "extension_tenant"}
    )
    headers = {
        "X-MS-CLIENT-PRINCIPAL": principal({"preferred_username": "carol@contoso.com", "extension_tenant": "t-42"}),
        "X-MS-CLIENT-PRINCIPAL-NAME": "ignored@contoso.com",
    }

    assert call(f"/api/embed/reports/{RLS_REPORT_ID}", headers).status_code == 200
    assert generate_bodies(fake)[0]["identities"] == [
        {"username": "carol@contoso.com", "roles": ["Region"], "customData": "t-42", "datasets": [RLS_DATASET_ID]}
    ]


@pytest.mark.parametrize(
    ("headers", "status"),
    [
        ({"X-MS-CLIENT-PRINCIPAL-NAME": "alice smith@contoso.com", "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}, 400),
        ({"X-MS-CLIENT-PRINCIPAL-NAME": "a" * 257, "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}, 400),
        ({"X-MS-CLIENT-PRINCIPAL": "not base64 json!"}, 401),
    ],
)
def test_usernames_power_bi_would_refuse_are_refused_first(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str], headers: dict[str, str], status: int
) -> None:
    if "X-MS-CLIENT-PRINCIPAL" in headers:
        rls["POWERBI_RLS_USERNAME_CLAIM"] = "preferred_username"

    assert call(f"/api/embed/reports/{RLS_REPORT_ID}", headers).status_code == status
    assert fake.requests == []


def test_a_forged_identity_gets_exactly_the_answer_it_would_get_without_trying(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    forged = {"username": "ceo@contoso.com", "roles": "Admin", "customData": "all"}
    honest = call(f"/api/embed/reports/{REPORT_ID}")
    first = generate_bodies(fake)
    fake.reset_records()
    function_app.use_service(None)  # a cold cache again, so the forged request reaches Power BI too

    tried = call(
        f"/api/embed/reports/{REPORT_ID}",
        {**ALICE, "X-Username": "ceo@contoso.com", "X-MS-TOKEN-AAD-ID-TOKEN": "forged"},
        **forged,
    )

    assert tried.status_code == honest.status_code == 200
    assert generate_bodies(fake) == first
    assert "identities" not in first[0]


def test_each_user_gets_their_own_token(call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]) -> None:
    path = f"/api/embed/reports/{RLS_REPORT_ID}"
    alice, bob, alice_again = (body(call(path, who))["accessToken"] for who in (ALICE, BOB, ALICE))

    assert alice != bob
    assert alice_again == alice
    users = [b["identities"][0]["username"] for b in generate_bodies(fake)]
    assert users == ["alice@contoso.com", "bob@contoso.com"]


def test_a_dashboard_sends_the_identity_only_for_its_rls_tiles(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    response = call(f"/api/embed/dashboards/{RLS_DASHBOARD_ID}", ALICE)

    assert response.status_code == 200
    assert generate_bodies(fake) == [
        {
            "accessLevel": "View",
            "identities": [{"username": "alice@contoso.com", "roles": ["Region"], "datasets": [RLS_DATASET_ID]}],
        }
    ]


# --- every embeddable type ----------------------------------------------------------------------------------


def test_a_tile(call: Callable[..., Any], fake: FakeUpstream) -> None:
    response = call(f"/api/embed/dashboards/{DASHBOARD_ID}/tiles/{TILE_ID}")

    assert response.status_code == 200
    answer = body(response)
    assert (answer["type"], answer["id"], answer["dashboardId"]) == ("tile", TILE_ID, DASHBOARD_ID)
    assert f"tileId={TILE_ID}" in answer["embedUrl"]
    assert [r.path for r in fake.calls("POST", "GenerateToken")] == [
        f"/v1.0/myorg/groups/{WORKSPACE_ID}/dashboards/{DASHBOARD_ID}/tiles/{TILE_ID}/GenerateToken"
    ]
    assert generate_bodies(fake) == [{"accessLevel": "View"}]


def test_an_rls_tile(call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]) -> None:
    assert call(f"/api/embed/dashboards/{RLS_DASHBOARD_ID}/tiles/{RLS_TILE_ID}", ALICE).status_code == 200
    assert call(f"/api/embed/dashboards/{RLS_DASHBOARD_ID}/tiles/{PLAIN_TILE_ID}", ALICE).status_code == 200
    rls_tile, plain_tile = generate_bodies(fake)
    assert rls_tile["identities"][0]["datasets"] == [RLS_DATASET_ID]
    assert "identities" not in plain_tile


def test_a_paginated_report_has_no_dataset(call: Callable[..., Any], fake: FakeUpstream) -> None:
    assert call(f"/api/embed/reports/{PAGINATED_REPORT_ID}").status_code == 200
    assert generate_bodies(fake) == [{"reports": [{"id": PAGINATED_REPORT_ID}]}]


def test_several_reports_under_one_token(call: Callable[..., Any], fake: FakeUpstream) -> None:
    response = call("/api/embed/reports", ids=f"{REPORT_ID},{PAGINATED_REPORT_ID.upper()},{REPORT_ID}")

    assert response.status_code == 200
    answer = body(response)
    assert answer["type"] == "reports"
    assert [(i["id"], i["workspaceId"]) for i in answer["items"]] == [
        (REPORT_ID, WORKSPACE_ID),
        (PAGINATED_REPORT_ID, WORKSPACE_ID),
    ]
    assert all(i["embedUrl"].startswith("https://app.powerbi.com/") for i in answer["items"])
    assert {"accessToken", "tokenType", "tokenId", "expiration"} <= answer.keys()
    # The token's reports in a canonical order (one set, one token), the answer's in the order asked for.
    assert generate_bodies(fake) == [
        {"reports": [{"id": PAGINATED_REPORT_ID}, {"id": REPORT_ID}], "datasets": [{"id": DATASET_ID}]}
    ]


def test_one_report_not_allowed_refuses_them_all(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_ALLOWED_REPORTS"] = REPORT_ID

    assert outcome(call("/api/embed/reports", ids=f"{REPORT_ID},{PAGINATED_REPORT_ID}")) == (403, "not_allowed")
    assert fake.requests == []


@pytest.mark.parametrize(
    ("path", "params", "expected"),
    [
        ("/api/embed/reports", {}, (400, "invalid_request")),  # no ids
        ("/api/embed/reports", {"ids": ",".join([REPORT_ID] * 2 + ["x"])}, (400, "invalid_request")),
        (f"/api/embed/dashboards/{DASHBOARD_ID}", {"accessLevel": "Edit"}, (400, "invalid_request")),
        (f"/api/embed/dashboards/{DASHBOARD_ID}/tiles/{TILE_ID}", {"accessLevel": "Edit"}, (400, "invalid_request")),
        (f"/api/embed/reports/{REPORT_ID}", {"accessLevel": "Owner"}, (400, "invalid_request")),
        (f"/api/embed/reports/{REPORT_ID}", {"accessLevel": "Edit"}, (403, "not_allowed")),
        (f"/api/embed/datasets/{DATASET_ID}/create", {}, (403, "not_allowed")),
    ],
)
def test_bad_combinations_and_edits_not_allowed(
    call: Callable[..., Any], fake: FakeUpstream, path: str, params: dict[str, str], expected: tuple[int, str]
) -> None:
    assert outcome(call(path, **params)) == expected
    assert fake.requests == []


def test_more_than_fifty_reports_is_400(call: Callable[..., Any], fake: FakeUpstream) -> None:
    ids = ",".join(f"00000000-0000-4000-8000-{n:012d}" for n in range(51))

    assert outcome(call("/api/embed/reports", ids=ids)) == (400, "invalid_request")


def test_edit_when_allowed(call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]) -> None:
    env["POWERBI_ALLOW_EDIT"] = "true"

    view = body(call(f"/api/embed/reports/{REPORT_ID}"))
    edit = body(call(f"/api/embed/reports/{REPORT_ID}", accessLevel="Edit"))

    assert view["accessToken"] != edit["accessToken"]  # cached apart
    assert generate_bodies(fake)[1] == {
        "reports": [{"id": REPORT_ID, "allowEdit": True}],
        "datasets": [{"id": DATASET_ID}],
        "targetWorkspaces": [{"id": WORKSPACE_ID}],
    }


def test_create_when_allowed(call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]) -> None:
    env["POWERBI_ALLOW_EDIT"] = "true"

    response = call(f"/api/embed/datasets/{DATASET_ID}/create")

    assert response.status_code == 200
    answer = body(response)
    assert (answer["type"], answer["datasetId"], answer["workspaceId"]) == ("create", DATASET_ID, WORKSPACE_ID)
    assert answer["embedUrl"].startswith("https://app.powerbi.com/")
    assert generate_bodies(fake) == [{"datasets": [{"id": DATASET_ID}], "targetWorkspaces": [{"id": WORKSPACE_ID}]}]
