"""The workspace catalog: list calls instead of one GET per item, refreshes bounded, failures not kept."""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Callable
from typing import Any

import pytest

from emulator import (
    DASHBOARD_ID,
    DATASET_ID,
    OTHER_DATASET_ID,
    OTHER_WORKSPACE_ID,
    REPORT_ID,
    TILE_ID,
    WORKSPACE_ID,
    FakeUpstream,
)
from emulator import catalog as cat
from shared.catalog import Listing
from shared.embed import EmbedService
from shared.powerbi import Dataset, Item
from tests.conftest import FakeClock

GROUP = f"/v1.0/myorg/groups/{WORKSPACE_ID}"


def body(response: Any) -> dict[str, Any]:
    return json.loads(response.get_body())  # type: ignore[no-any-return]


def powerbi_calls(fake: FakeUpstream) -> list[str]:
    return [f"{r.method} {r.path}" for r in fake.requests if r.path.startswith("/v1.0/")]


def publish(fake: FakeUpstream, count: int, dataset: str = DATASET_ID, start: int = 1) -> list[str]:
    """Add ``count`` reports on ``dataset`` to the Sales workspace; their ids."""
    ids = [f"00000000-0000-4000-8000-{n:012d}" for n in range(start, start + count)]
    ws = cat.workspace(fake.catalog, WORKSPACE_ID)
    assert ws is not None
    ws["reports"] += [{"id": i, "name": f"Report {i[-4:]}", "datasetId": dataset} for i in ids]
    return ids


def test_a_cold_request_for_fifty_reports_makes_three_power_bi_calls(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    ids = publish(fake, 50)

    response = call("/api/embed/reports", ids=",".join(ids))

    assert response.status_code == 200
    assert [i["id"] for i in body(response)["items"]] == ids
    assert powerbi_calls(fake) == [f"GET {GROUP}/reports", f"GET {GROUP}/datasets", "POST /v1.0/myorg/GenerateToken"]
    generate = fake.calls("POST", "GenerateToken")[0].json
    assert generate == {"reports": [{"id": i} for i in ids], "datasets": [{"id": DATASET_ID}]}


def test_random_ids_cost_at_most_two_reads_of_the_reports_list_a_minute(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    answers = []
    for _ in range(1000):
        answers.append(call(f"/api/embed/reports/{uuid.uuid4()}").status_code)
        clock.advance(0.06)  # 1,000 requests over one minute

    assert set(answers) == {404}
    assert powerbi_calls(fake) == [f"GET {GROUP}/reports"]  # the cold read; a refresh is due only after 60 s
    clock.advance(1)
    assert call(f"/api/embed/reports/{uuid.uuid4()}").status_code == 404
    assert powerbi_calls(fake) == [f"GET {GROUP}/reports"] * 2


def test_an_unknown_id_answers_404_without_an_upstream_call(call: Callable[..., Any], fake: FakeUpstream) -> None:
    assert call(f"/api/embed/reports/{REPORT_ID}").status_code == 200
    fake.reset_records()

    response = call(f"/api/embed/reports/{uuid.uuid4()}")

    assert (response.status_code, body(response)["error"]["code"]) == (404, "not_found")
    assert fake.requests == []


def test_a_newly_published_report_works_within_the_refresh_interval(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock
) -> None:
    assert call(f"/api/embed/reports/{REPORT_ID}").status_code == 200
    [new] = publish(fake, 1)

    assert call(f"/api/embed/reports/{new}").status_code == 404  # read a moment ago: not read again yet
    clock.advance(60)
    assert call(f"/api/embed/reports/{new}").status_code == 200

    assert len(fake.calls("GET", f"{GROUP}/reports")) == 2
    assert len(fake.calls("GET", f"{GROUP}/datasets")) == 1  # still fresh: only the listing that missed is re-read


def test_the_catalog_is_read_again_after_its_ttl(
    call: Callable[..., Any], fake: FakeUpstream, clock: FakeClock, env: dict[str, str]
) -> None:
    env["POWERBI_CATALOG_TTL_SECONDS"] = "300"
    env["POWERBI_CATALOG_REFRESH_SECONDS"] = "30"
    first, second = publish(fake, 2)
    call(f"/api/embed/reports/{first}")
    clock.advance(299)
    call(f"/api/embed/reports/{second}")
    assert len(fake.calls("GET", f"{GROUP}/reports")) == 1
    clock.advance(2)

    call(f"/api/embed/reports/{REPORT_ID}")

    assert len(fake.calls("GET", f"{GROUP}/reports")) == 2


def test_concurrent_cold_requests_share_one_read_of_each_list(
    fake: FakeUpstream, env: dict[str, str], make_service: Callable[[dict[str, str]], EmbedService]
) -> None:
    ids = publish(fake, 16)
    fake.latency_for("/reports", 0.2)  # the readers overlap
    service = make_service(env)
    start = threading.Barrier(len(ids))
    errors: list[BaseException] = []

    def request(report_id: str) -> None:
        start.wait()
        try:
            service.embed("report", report_id)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in ids]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()

    assert errors == []
    assert len(fake.calls("GET", f"{GROUP}/reports")) == 1
    assert len(fake.calls("GET", f"{GROUP}/datasets")) == 1
    assert len(fake.calls("POST", "GenerateToken")) == 16  # one token per report: each is its own key


@pytest.mark.parametrize(
    ("status", "expected"), [(401, (502, "powerbi_error")), (404, (404, "not_found")), (503, (503, "unavailable"))]
)
def test_a_catalog_that_cannot_be_read_is_not_kept(
    call: Callable[..., Any], fake: FakeUpstream, status: int, expected: tuple[int, str]
) -> None:
    # Once, or for the first try and the three retries of a 503.
    fake.fault("GET", f"{GROUP}/reports", status=status, headers={"Retry-After": "1"}, times=4 if status == 503 else 1)

    failed = call(f"/api/embed/reports/{REPORT_ID}")
    served = call(f"/api/embed/reports/{REPORT_ID}")

    assert (failed.status_code, body(failed)["error"]["code"]) == expected
    assert served.status_code == 200  # the next request reads again: the failure was not cached as empty


def test_a_dataset_in_another_workspace_is_read_from_that_workspaces_list(
    call: Callable[..., Any], fake: FakeUpstream
) -> None:
    [report] = publish(fake, 1, dataset=OTHER_DATASET_ID)

    response = call(f"/api/embed/reports/{report}")

    assert response.status_code == 200
    assert powerbi_calls(fake) == [
        f"GET {GROUP}/reports",
        f"GET /v1.0/myorg/groups/{OTHER_WORKSPACE_ID}/datasets",
        "POST /v1.0/myorg/GenerateToken",
    ]
    assert fake.calls("POST", "GenerateToken")[0].json["datasets"] == [{"id": OTHER_DATASET_ID}]


def test_dashboards_and_tiles_read_the_tiles_only_when_asked(call: Callable[..., Any], fake: FakeUpstream) -> None:
    assert call(f"/api/embed/reports/{REPORT_ID}").status_code == 200
    assert not fake.calls(path_contains="/dashboards")
    assert call(f"/api/embed/dashboards/{DASHBOARD_ID}").status_code == 200
    assert call(f"/api/embed/dashboards/{DASHBOARD_ID}/tiles/{TILE_ID}").status_code == 200
    unknown_tile = call(f"/api/embed/dashboards/{DASHBOARD_ID}/tiles/{uuid.uuid4()}")

    assert unknown_tile.status_code == 404
    assert [p for p in powerbi_calls(fake) if p.startswith("GET")] == [
        f"GET {GROUP}/reports",
        f"GET {GROUP}/datasets",
        f"GET {GROUP}/dashboards",
        f"GET {GROUP}/dashboards/{DASHBOARD_ID}/tiles",
    ]


def test_listings_are_plain_json_values() -> None:
    item = Item("report", REPORT_ID, WORKSPACE_ID, "https://app.powerbi.com/reportEmbed", ((WORKSPACE_ID, DATASET_ID),))
    dataset = Dataset(DATASET_ID, WORKSPACE_ID, True, False, "https://app.powerbi.com/reportEmbed")
    listing = Listing(1234.5, (item,), (dataset,), (DATASET_ID,))

    again = Listing.from_json(json.loads(json.dumps(listing.to_json())))

    assert again == listing
    assert again.find(REPORT_ID) == item and again.find(DATASET_ID) == dataset
