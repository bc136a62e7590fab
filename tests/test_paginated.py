"""Paginated reports built on Power BI semantic models: the models from the report's data sources, granted
with xmlaPermissions ReadOnly, and the identity as Microsoft documents it for paginated reports."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
import requests

from emulator import DATASET_ID, PAGINATED_REPORT_ID, REPORT_ID, RLS_DATASET_ID, WORKSPACE_ID, FakeUpstream
from emulator.catalog import PAGINATED_MODEL_REPORT_ID, PAGINATED_RLS_REPORT_ID

GROUP = f"/v1.0/myorg/groups/{WORKSPACE_ID}"
ALICE = {"X-MS-CLIENT-PRINCIPAL-NAME": "alice@contoso.com", "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def generate_bodies(fake: FakeUpstream) -> list[Any]:
    return [r.json for r in fake.calls("POST", "GenerateToken")]


@pytest.fixture
def rls(env: dict[str, str]) -> dict[str, str]:
    env.update(
        {"POWERBI_RLS_USERNAME_SOURCE": "principal", "POWERBI_RLS_ROLES": "Region", "WEBSITE_AUTH_ENABLED": "True"}
    )
    return env


def test_a_paginated_report_on_a_semantic_model_grants_it_read_only_xmla(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    response = call(f"/api/embed/reports/{PAGINATED_MODEL_REPORT_ID}")

    assert response.status_code == 200
    assert generate_bodies(fake) == [
        {
            "reports": [{"id": PAGINATED_MODEL_REPORT_ID}],
            "datasets": [{"id": DATASET_ID, "xmlaPermissions": "ReadOnly"}],
        }
    ]
    assert fake.embed_tokens[body(response)["accessToken"]].datasets == (DATASET_ID,)


def test_the_data_sources_are_read_once_per_report(
    call: Callable[..., Any], fake: FakeUpstream, env: dict[str, str]
) -> None:
    env["POWERBI_ALLOW_EDIT"] = "true"
    call(f"/api/embed/reports/{PAGINATED_MODEL_REPORT_ID}")
    call("/api/embed/reports", ids=f"{PAGINATED_MODEL_REPORT_ID},{REPORT_ID}")  # another token, same report

    assert [r.path for r in fake.calls("GET", "/datasources")] == [
        f"{GROUP}/reports/{PAGINATED_MODEL_REPORT_ID}/datasources"
    ]
    # A model that is also a Power BI report's dataset is listed once, with read-only XMLA.
    assert generate_bodies(fake)[1]["datasets"] == [{"id": DATASET_ID, "xmlaPermissions": "ReadOnly"}]


def test_a_paginated_report_on_an_rls_model_sends_the_identity_for_the_model_and_the_report(
    call: Callable[..., Any], fake: FakeUpstream, rls: dict[str, str]
) -> None:
    response = call(f"/api/embed/reports/{PAGINATED_RLS_REPORT_ID}", ALICE)

    assert response.status_code == 200
    assert generate_bodies(fake) == [
        {
            "reports": [{"id": PAGINATED_RLS_REPORT_ID}],
            "datasets": [{"id": RLS_DATASET_ID, "xmlaPermissions": "ReadOnly"}],
            "identities": [
                {
                    "username": "alice@contoso.com",
                    "roles": ["Region"],
                    "datasets": [RLS_DATASET_ID],
                    "reports": [PAGINATED_RLS_REPORT_ID],
                }
            ],
        }
    ]


def test_a_paginated_report_with_a_sql_source_keeps_the_body_of_today(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    assert call(f"/api/embed/reports/{PAGINATED_REPORT_ID}").status_code == 200
    assert generate_bodies(fake) == [{"reports": [{"id": PAGINATED_REPORT_ID}]}]
    assert len(fake.calls("GET", "/datasources")) == 1


def test_a_model_in_another_workspace_is_read_by_id(call: Callable[..., Any], fake: FakeUpstream) -> None:
    from emulator import OTHER_DATASET_ID
    from emulator import catalog as cat

    ws = cat.workspace(fake.catalog, WORKSPACE_ID)
    assert ws is not None
    report = "00000000-0000-4000-8000-0000000000aa"
    ws["reports"].append(
        {"id": report, "name": "Finance ledger", "reportType": "PaginatedReport", "semanticModels": [OTHER_DATASET_ID]}
    )

    assert call(f"/api/embed/reports/{report}").status_code == 200
    assert f"GET /v1.0/myorg/datasets/{OTHER_DATASET_ID}" in [f"{r.method} {r.path}" for r in fake.requests]
    assert generate_bodies(fake)[0]["datasets"] == [{"id": OTHER_DATASET_ID, "xmlaPermissions": "ReadOnly"}]


# --- the emulator answers and enforces it as Power BI does --------------------------------------------------


def _bearer(fake: FakeUpstream, call: Callable[..., Any]) -> dict[str, str]:
    call(f"/api/embed/reports/{REPORT_ID}")
    return {"Authorization": fake.calls("POST", "GenerateToken")[0].headers["authorization"]}


def test_the_emulators_data_sources_name_the_model_as_power_bi_does(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    headers = _bearer(fake, call)

    answer = requests.get(
        f"{fake.base_url}{GROUP}/reports/{PAGINATED_MODEL_REPORT_ID}/datasources", headers=headers, timeout=5
    ).json()
    sql = requests.get(f"{fake.base_url}{GROUP}/reports/{PAGINATED_REPORT_ID}/datasources", headers=headers, timeout=5)

    [source] = answer["value"]
    assert source["datasourceType"] == "AnalysisServices"
    assert source["connectionDetails"] == {
        "server": f"pbiazure://localhost:{fake.port}",
        "database": f"sobe_wowvirtualserver-{DATASET_ID}",
    }
    assert [s["datasourceType"] for s in sql.json()["value"]] == ["Sql"]


@pytest.mark.parametrize(
    "datasets",
    [[], [{"id": DATASET_ID}], [{"id": DATASET_ID, "xmlaPermissions": "Off"}]],
)
def test_the_emulator_refuses_a_paginated_report_without_its_model_read_only(
    call: Callable[..., Any], fake: FakeUpstream, datasets: list[dict[str, str]]
) -> None:
    headers = _bearer(fake, call)
    payload: dict[str, Any] = {"reports": [{"id": PAGINATED_MODEL_REPORT_ID}]} | (
        {"datasets": datasets} if datasets else {}
    )

    answer = requests.post(f"{fake.base_url}/v1.0/myorg/GenerateToken", json=payload, headers=headers, timeout=5)

    assert answer.status_code == 400
    assert "xmlaPermissions ReadOnly" in answer.json()["error"]["message"]


def test_the_emulator_wants_the_paginated_report_in_the_identity(call: Callable[..., Any], fake: FakeUpstream) -> None:
    headers = _bearer(fake, call)
    identity = {"username": "alice@contoso.com", "roles": ["Region"], "datasets": [RLS_DATASET_ID]}
    payload = {
        "reports": [{"id": PAGINATED_RLS_REPORT_ID}],
        "datasets": [{"id": RLS_DATASET_ID, "xmlaPermissions": "ReadOnly"}],
        "identities": [identity],
    }

    without = requests.post(f"{fake.base_url}/v1.0/myorg/GenerateToken", json=payload, headers=headers, timeout=5)
    payload["identities"] = [identity | {"reports": [PAGINATED_RLS_REPORT_ID]}]
    with_report = requests.post(f"{fake.base_url}/v1.0/myorg/GenerateToken", json=payload, headers=headers, timeout=5)

    assert without.status_code == 400 and "'reports'" in without.json()["error"]["message"]
    assert with_report.status_code == 200
