"""Telemetry end to end: the function on the local host (a process of its own, as on a worker), the
emulator upstream, and a real telemetry backend: an OTLP/HTTP receiver or an Application Insights
ingestion stand-in. Each test makes a miss, a hit, an error and a throttled request, stops the host
(which flushes at exit) and reads what was exported: spans and their parents, attributes, metrics,
logs, and every byte searched for every secret and token the test knows."""

from __future__ import annotations

import base64
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests

from emulator import PAGINATED_REPORT_ID, REPORT_ID, USERNAME, FakeUpstream
from tests.conftest import PASSWORD, REDIS_PASSWORD, SECRET
from tests.redis_server import RedisServer
from tests.telemetry_receivers import IngestionStandIn, OtlpReceiver, Span

REPO = Path(__file__).resolve().parent.parent
IKEY = "11111111-2222-3333-4444-555555555555"
KEY = base64.b64encode(bytes(range(32))).decode()  # POWERBI_CACHE_ENCRYPTION_KEY
UNKNOWN_REPORT = "0badc0de-0000-4000-8000-000000000000"
# The Functions worker configuring the distro before it loads the app (PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY).
WORKER = (
    "from azure.monitor.opentelemetry import configure_azure_monitor; configure_azure_monitor(); "
    "import runpy, sys; sys.argv[0] = 'emulator.host'; runpy.run_module('emulator.host', run_name='__main__')"
)


@dataclass
class Answers:
    miss: requests.Response
    hit: requests.Response
    error: requests.Response
    throttled: requests.Response


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _host_env(env: dict[str, str], telemetry: dict[str, str]) -> dict[str, str]:
    prefixes = ("POWERBI_", "OTEL_", "APPLICATIONINSIGHTS_", "PYTHON_APPLICATIONINSIGHTS_")
    base = {k: v for k, v in os.environ.items() if not k.startswith(prefixes)}
    # No statsbeat (the distro's own usage reports to Microsoft): the stand-in is the only backend. Every
    # trace kept (the distro's default samples 5 traces a second; metrics are never sampled).
    quiet = {"APPLICATIONINSIGHTS_STATSBEAT_DISABLED_ALL": "true", "OTEL_TRACES_SAMPLER": "always_on"}
    return {**base, **env, **quiet, **telemetry}


class Host:
    """``python -m emulator.host`` with the test's settings, stopped by SIGTERM (a clean exit)."""

    def __init__(self, tmp_path: Path, env: dict[str, str], prelude: str | None = None) -> None:
        settings = tmp_path / "local.settings.json"
        settings.write_text(json.dumps({"IsEncrypted": False, "Values": {}}))
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}/api"
        args = ["--settings", str(settings), "--port", str(self.port)]
        command = [sys.executable, "-c", prelude, *args] if prelude else [sys.executable, "-m", "emulator.host", *args]
        # Its output is drained into a file by a thread (a pipe nobody read would fill and block its logging);
        # the host says when it listens, so the test waits for that line instead of polling the port.
        self.log = tmp_path / f"host-{self.port}.log"
        self.process = subprocess.Popen(  # noqa: S603 - this interpreter, the test's own arguments
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self.output = ""
        listening = threading.Event()
        self._drain = threading.Thread(target=self._copy_output, args=(listening,), daemon=True)
        self._drain.start()
        listening.wait(timeout=60)
        if not listening.is_set() or self.process.poll() is not None:
            self.stop()
            raise AssertionError(f"the host did not start:\n{self.output}")

    def _copy_output(self, listening: threading.Event) -> None:
        assert self.process.stdout is not None
        with self.process.stdout, self.log.open("w") as out:
            for line in self.process.stdout:
                out.write(line)
                out.flush()
                if line.startswith("Listening on "):
                    listening.set()
        listening.set()  # the host ended: stop waiting (the caller sees it has exited)

    def get(self, path: str) -> requests.Response:
        return requests.get(f"{self.url}/{path}", timeout=10)

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"the host did not stop within 60 s:\n{self.log.read_text()}") from None
        finally:
            self._drain.join(timeout=60)
            self.output = self.log.read_text()
        return self.process.returncode


def _four_requests(host: Host, fake: FakeUpstream) -> Answers:
    miss = host.get(f"embed/reports/{REPORT_ID}")
    hit = host.get(f"embed/reports/{REPORT_ID}")
    error = host.get(f"embed/reports/{UNKNOWN_REPORT}")
    # Throttled for longer than the request's deadline: answered 429 at once, without waiting.
    fake.throttle("GenerateToken", retry_after=3600, times=10)
    throttled = host.get(f"embed/reports/{PAGINATED_REPORT_ID}")
    assert (miss.status_code, hit.status_code, error.status_code, throttled.status_code) == (200, 200, 404, 429)
    return Answers(miss, hit, error, throttled)


def _secrets(fake: FakeUpstream, answers: Answers) -> list[str]:
    """Everything that must never be exported: settings' secrets, the user name, every token."""
    known = [SECRET, PASSWORD, USERNAME, USERNAME.split("@")[0], answers.miss.json()["accessToken"]]
    known += list(fake.access_tokens) + list(fake.embed_tokens)
    return [k for k in known if k]


def _assert_nothing_secret(exported: bytes, secrets: list[str]) -> None:
    assert exported, "nothing was exported"
    for secret in secrets:
        assert secret.encode() not in exported, f"exported telemetry holds a secret ({secret[:6]}...)"


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeUpstream]:
    """An emulator of this module's own (conftest's ``fake`` resets it per test): the hosts here sign in from
    other processes, and the tokens they get must not be in the session emulator, whose first token other
    modules take for one their own process was given (and registered for redaction)."""
    with FakeUpstream() as fake:
        yield fake


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Any]:
    """Start a host (``start(env, prelude=None)``); any still running is stopped at the end."""
    hosts: list[Host] = []

    def make(env: dict[str, str], prelude: str | None = None) -> Host:
        hosts.append(Host(tmp_path, env, prelude))
        return hosts[-1]

    yield make
    for host in hosts:
        host.stop()


@pytest.fixture
def otlp() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as receiver:
        yield receiver


@pytest.fixture
def ingestion() -> Iterator[IngestionStandIn]:
    with IngestionStandIn() as stand_in:
        yield stand_in


def _requests(spans: list[Span]) -> dict[str, Span]:
    """The request spans by cache outcome or error code."""
    found = {}
    for span in spans:
        if span.kind == 2:  # SERVER
            a = span.attributes
            found[str(a.get("powerbi.error_code") or a.get("powerbi.cache"))] = span
    return found


def test_otlp_spans_parents_attributes_metrics_and_logs(
    fake: FakeUpstream, env: dict[str, str], start: Any, otlp: OtlpReceiver
) -> None:
    host = start(_host_env(env, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}))
    answers = _four_requests(host, fake)
    assert host.stop() == 0, host.output

    spans = otlp.spans()
    by_outcome = _requests(spans)
    assert set(by_outcome) == {"miss", "hit", "not_found", "throttled"}
    miss, hit = by_outcome["miss"], by_outcome["hit"]
    assert miss.resource["service.name"] == "powerbi-embed"
    assert miss.name == "GET /api/embed/reports/{reportId}"
    assert miss.attributes["http.route"] == "/api/embed/reports/{reportId}"
    assert miss.attributes["http.response.status_code"] == 200
    assert miss.attributes["powerbi.kind"] == "report"
    assert miss.attributes["powerbi.workspace_id"] == env["POWERBI_WORKSPACE_ID"]
    assert miss.attributes["powerbi.item_ids"] == [REPORT_ID]
    assert miss.attributes["powerbi.rls"] is False
    assert "powerbi.error_code" not in miss.attributes
    assert hit.attributes["powerbi.cache"] == "hit"
    throttled, error = by_outcome["throttled"], by_outcome["not_found"]
    assert throttled.attributes["http.response.status_code"] == 429
    assert error.attributes["http.response.status_code"] == 404

    children = {s.span_id: s for s in spans if s.parent_span_id}
    under_miss = [s for s in children.values() if s.parent_span_id == miss.span_id]
    assert all(s.trace_id == miss.trace_id for s in under_miss)
    services = {(s.attributes["powerbi.service"], s.attributes["powerbi.operation"]) for s in under_miss}
    assert ("entra", "token") in services
    assert ("powerbi", "GenerateToken") in services
    assert ("powerbi", "reports") in services  # the workspace listing
    mint = next(s for s in under_miss if s.attributes["powerbi.operation"] == "GenerateToken")
    assert mint.kind == 3  # CLIENT
    assert mint.name == "POST /v1.0/myorg/GenerateToken"
    assert mint.attributes["http.request.method"] == "POST"
    assert mint.attributes["url.template"] == "/v1.0/myorg/GenerateToken"
    assert mint.attributes["server.address"] == "localhost"
    assert mint.attributes["http.response.status_code"] == 200
    assert mint.attributes["powerbi.request_id"]  # Power BI's RequestId of that call
    assert not [s for s in children.values() if s.parent_span_id == hit.span_id]  # a hit calls nothing
    throttled_mint = next(
        s for s in children.values() if s.parent_span_id == throttled.span_id and "Generate" in s.name
    )
    assert throttled_mint.attributes["http.response.status_code"] == 429
    assert throttled_mint.status_code == 2  # ERROR
    for span in spans:  # no URL with its query or user, anywhere
        assert "?" not in span.name and "userrealm/" + USERNAME not in span.name
        assert not any(k in ("url.full", "http.url") for k in span.attributes)

    points = otlp.points()
    requests_counted = {
        (p.attributes.get("cache"), p.attributes.get("error_code"), p.attributes["status_code"], p.attributes["kind"])
        for p in points
        if p.metric == "powerbi.embed.requests"
    }
    assert requests_counted == {
        ("miss", None, 200, "report"),
        ("hit", None, 200, "report"),
        (None, "not_found", 404, "report"),
        (None, "throttled", 429, "report"),
    }
    minted = [p for p in points if p.metric == "powerbi.embed.tokens_minted"]
    assert [(p.attributes, p.value) for p in minted] == [
        ({"kind": "report", "api": "V2", "rls": False, "reason": "miss"}, 1)
    ]
    durations = {
        (p.attributes["service"], p.attributes["operation"], p.attributes["status"])
        for p in points
        if p.metric == "powerbi.upstream.duration"
    }
    assert {
        ("entra", "token", "200"),
        ("powerbi", "GenerateToken", "200"),
        ("powerbi", "GenerateToken", "429"),
    } <= durations
    remaining = [p for p in points if p.metric == "powerbi.embed.token_remaining"]
    assert sum(p.count for p in remaining) == 2  # the miss and the hit handed a token out
    assert all(p.attributes == {"kind": "report"} for p in remaining)
    assert 0 < remaining[0].value <= 2 * 3600 * 2
    gauge = {p.attributes["cache"]: p.value for p in points if p.metric == "powerbi.cache.entries"}
    assert gauge["tokens"] == 1

    # Warnings and errors are exported with their request's trace and span ids; the info line is not.
    logs = otlp.log_records()
    answered = {body.split()[1]: (trace_id, span_id) for body, trace_id, span_id in logs if body.startswith("answered")}
    assert answered["404"] == (error.trace_id, error.span_id)
    assert answered["429"] == (throttled.trace_id, throttled.span_id)
    assert not [body for body, _, _ in logs if body.startswith("embed report")]

    _assert_nothing_secret(otlp.all_bytes(), _secrets(fake, answers))


def test_the_request_span_continues_the_callers_trace_through_the_hosts_context(
    fake: FakeUpstream, env: dict[str, str], start: Any, otlp: OtlpReceiver
) -> None:
    host = start(_host_env(env, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}))
    trace_id, caller = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
    url = f"{host.url}/embed/reports/{REPORT_ID}"
    assert requests.get(url, headers={"traceparent": f"00-{trace_id}-{caller}-01"}, timeout=10).status_code == 200
    assert host.stop() == 0, host.output
    (request,) = _requests(otlp.spans()).values()
    assert request.trace_id == trace_id
    assert request.parent_span_id not in ("", caller)  # the host's span for the invocation, in between


def test_otel_service_name_is_honoured(fake: FakeUpstream, env: dict[str, str], start: Any, otlp: OtlpReceiver) -> None:
    telemetry = {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url, "OTEL_SERVICE_NAME": "embed-west"}
    host = start(_host_env(env, telemetry))
    assert host.get(f"embed/reports/{REPORT_ID}").status_code == 200
    assert host.stop() == 0, host.output
    assert {s.resource["service.name"] for s in otlp.spans()} == {"embed-west"}


def test_a_receiver_that_hangs_delays_no_request(
    fake: FakeUpstream, env: dict[str, str], start: Any, otlp: OtlpReceiver
) -> None:
    # Exports start at once and hang for a minute; an export in the request's path would time the
    # test's requests out (10 s). The queue is small, so most spans are dropped rather than waited for.
    otlp.hang()
    telemetry = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url,
        "OTEL_EXPORTER_OTLP_TIMEOUT": "60",
        "OTEL_BSP_SCHEDULE_DELAY": "1",
        "OTEL_BSP_MAX_QUEUE_SIZE": "4",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE": "1",
        "OTEL_METRIC_EXPORT_INTERVAL": "1",
    }
    host = start(_host_env(env, telemetry))
    for _ in range(8):
        assert host.get(f"embed/reports/{REPORT_ID}").status_code == 200
    otlp.release.set()
    assert host.stop() == 0, host.output


def test_a_receiver_that_is_down_fails_no_request(fake: FakeUpstream, env: dict[str, str], start: Any) -> None:
    closed = f"http://127.0.0.1:{_free_port()}"
    telemetry = {"OTEL_EXPORTER_OTLP_ENDPOINT": closed, "OTEL_BSP_SCHEDULE_DELAY": "1"}
    host = start(_host_env(env, telemetry))
    for _ in range(3):
        assert host.get(f"embed/reports/{REPORT_ID}").status_code == 200
    assert host.stop() == 0, host.output


def _connection_string(ingestion: IngestionStandIn) -> str:
    return f"InstrumentationKey={IKEY};IngestionEndpoint={ingestion.url}/;LiveEndpoint={ingestion.url}/"


def _assert_application_insights(ingestion: IngestionStandIn, env: dict[str, str]) -> dict[str, dict[str, Any]]:
    """The four requests, their dependencies and the metrics, as Application Insights received them."""
    requests_ = {}
    for request in ingestion.of_type("RequestData"):
        props = request["properties"]
        requests_[props.get("powerbi.error_code") or props.get("powerbi.cache")] = request
    assert set(requests_) == {"miss", "hit", "not_found", "throttled"}
    miss = requests_["miss"]
    assert miss["properties"]["powerbi.kind"] == "report"
    assert miss["properties"]["powerbi.workspace_id"] == env["POWERBI_WORKSPACE_ID"]
    assert miss["responseCode"] == "200" and requests_["throttled"]["responseCode"] == "429"
    dependencies = ingestion.of_type("RemoteDependencyData")
    under_miss = [d for d in dependencies if d["tags"].get("ai.operation.parentId") == miss["id"]]
    assert {d["properties"]["powerbi.service"] for d in under_miss} == {"entra", "powerbi"}
    assert all(d["tags"]["ai.operation.id"] == miss["tags"]["ai.operation.id"] for d in under_miss)
    mint = next(d for d in under_miss if d["properties"]["powerbi.operation"] == "GenerateToken")
    assert mint["properties"]["powerbi.request_id"]
    assert all("?" not in d.get("data", "") for d in dependencies)  # no URL with its query
    names = {m["name"] for metric in ingestion.of_type("MetricData") for m in metric["metrics"]}
    assert {
        "powerbi.embed.requests",
        "powerbi.embed.tokens_minted",
        "powerbi.upstream.duration",
        "powerbi.embed.token_remaining",
        "powerbi.cache.entries",
    } <= names
    minted = [m for m in ingestion.of_type("MetricData") if m["metrics"][0]["name"] == "powerbi.embed.tokens_minted"]
    assert minted[0]["properties"] == {"kind": "report", "api": "V2", "rls": "False", "reason": "miss"}
    return requests_


def _workbook_queries() -> list[tuple[str, str]]:
    book = json.loads((REPO / "deploy" / "workbook.json").read_text())
    return [(i["content"]["title"], i["content"]["query"]) for i in book["items"] if i["type"] == 3]


def _assert_workbook_asks_only_for_what_was_sent(ingestion: IngestionStandIn) -> None:
    """Each workbook query names only metrics and dimensions Application Insights received from the function."""
    sent: dict[str, set[str]] = {"customMetrics": set(), "requests": set(), "dependencies": set()}
    metric_names = set()
    for metric in ingestion.of_type("MetricData"):
        metric_names |= {m["name"] for m in metric["metrics"]}
        sent["customMetrics"] |= set(metric.get("properties", {}))
    sent["requests"] = {k for r in ingestion.of_type("RequestData") for k in r.get("properties", {})}
    sent["dependencies"] = {k for d in ingestion.of_type("RemoteDependencyData") for k in d.get("properties", {})}
    queries = _workbook_queries()
    titles = " / ".join(title for title, _ in queries).lower()
    for tile in ("requests and errors", "cache hit ratio", "tokens minted", "p95", "throttled", "life left"):
        assert tile in titles
    for title, query in queries:
        table = query.split()[0]
        assert table in sent, title
        for name in re.findall(r'\bname == "([^"]+)"', query):
            assert table == "customMetrics" and name in metric_names, (title, name)
        for key in re.findall(r'customDimensions\["([^"]+)"\]', query):
            assert key in sent[table], (title, key)


def test_application_insights_through_the_distro_and_the_workbook_asks_for_what_it_sends(
    fake: FakeUpstream, env: dict[str, str], start: Any, ingestion: IngestionStandIn
) -> None:
    host = start(_host_env(env, {"APPLICATIONINSIGHTS_CONNECTION_STRING": _connection_string(ingestion)}))
    answers = _four_requests(host, fake)
    assert host.stop() == 0, host.output
    requests_ = _assert_application_insights(ingestion, env)
    traces = ingestion.of_type("MessageData")
    answered = [t for t in traces if t["message"].startswith("answered 404")]
    assert [t["tags"]["ai.operation.id"] for t in answered] == [requests_["not_found"]["tags"]["ai.operation.id"]]
    assert answered[0]["tags"]["ai.operation.parentId"] == requests_["not_found"]["id"]
    _assert_workbook_asks_only_for_what_was_sent(ingestion)
    _assert_nothing_secret(ingestion.all_bytes(), _secrets(fake, answers))


def test_the_worker_configured_distro_gets_the_instruments_and_no_second_pipeline(
    fake: FakeUpstream, env: dict[str, str], start: Any, ingestion: IngestionStandIn
) -> None:
    telemetry = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": _connection_string(ingestion),
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true",
    }
    host = start(_host_env(env, telemetry), prelude=WORKER)
    answers = _four_requests(host, fake)
    assert host.stop() == 0, host.output
    requests_ = _assert_application_insights(ingestion, env)
    # One pipeline: each request exported once; the worker's HTTP instrumentation (whole URLs) undone.
    assert len(ingestion.of_type("RequestData")) == 4
    ids = [d["id"] for d in ingestion.of_type("RemoteDependencyData")]
    assert len(ids) == len(set(ids))
    assert all("powerbi.service" in d["properties"] for d in ingestion.of_type("RemoteDependencyData"))
    assert requests_["hit"]
    _assert_nothing_secret(ingestion.all_bytes(), _secrets(fake, answers))


def test_telemetry_settings_are_checked_by_name() -> None:
    from shared.errors import ConfigurationError
    from shared.settings import telemetry_settings

    assert telemetry_settings({}).mode == "off"
    assert telemetry_settings({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}).mode == "otlp"
    cs = f"InstrumentationKey={IKEY};IngestionEndpoint=https://x.in.applicationinsights.azure.com/"
    assert telemetry_settings({"APPLICATIONINSIGHTS_CONNECTION_STRING": cs}).mode == "azure_monitor"
    worker = {"APPLICATIONINSIGHTS_CONNECTION_STRING": cs, "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "true"}
    assert telemetry_settings(worker).mode == "worker"
    assert telemetry_settings({}).service_name == "powerbi-embed"
    bad = {
        "APPLICATIONINSIGHTS_CONNECTION_STRING": "not-a-connection-string-" + str(uuid.uuid4()),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318",
        "PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY": "yes",
    }
    with pytest.raises(ConfigurationError) as raised:
        telemetry_settings(bad)
    problems = " ".join(raised.value.problems)
    for name in bad:
        assert name in problems
    assert bad["APPLICATIONINSIGHTS_CONNECTION_STRING"] not in problems


def test_telemetry_off_imports_no_opentelemetry() -> None:
    code = (
        "import sys, function_app; "
        "print(sorted(m for m in sys.modules if m.startswith(('opentelemetry', 'azure.monitor', 'shared.otel'))))"
    )
    env = _host_env({}, {})
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, check=True)  # noqa: S603
    assert out.stdout.strip() == "[]"


def test_redis_calls_have_spans_and_durations_without_the_url_or_password(
    fake: FakeUpstream, env: dict[str, str], start: Any, otlp: OtlpReceiver, redis_server: RedisServer
) -> None:
    cache = {"POWERBI_CACHE_URL": redis_server.url, "POWERBI_CACHE_ENCRYPTION_KEY": KEY}
    host = start(_host_env({**env, **cache}, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}))
    answer = host.get(f"embed/reports/{REPORT_ID}")
    assert answer.status_code == 200
    assert host.stop() == 0, host.output

    spans = otlp.spans()
    request = _requests(spans)["miss"]
    redis_spans = [s for s in spans if s.attributes.get("powerbi.service") == "redis"]
    assert redis_spans and all(s.trace_id == request.trace_id for s in redis_spans)
    assert {s.name for s in redis_spans} >= {"redis GET", "redis SET"}
    first = redis_spans[0]
    assert first.kind == 3
    assert first.attributes["db.system.name"] == "redis"
    assert first.attributes["server.address"] == "127.0.0.1"
    durations = {p.attributes["operation"] for p in otlp.points() if p.attributes.get("service") == "redis"}
    assert {"GET", "SET"} <= durations
    exported = otlp.all_bytes()
    assert redis_server.url.encode() not in exported
    _assert_nothing_secret(exported, [REDIS_PASSWORD, SECRET, PASSWORD, answer.json()["accessToken"]])


def test_host_json_turns_on_the_hosts_opentelemetry_mode() -> None:
    assert json.loads((REPO / "host.json").read_text())["telemetryMode"] == "OpenTelemetry"


def test_make_demo_says_where_its_telemetry_goes() -> None:
    from scripts.demo import telemetry_note

    assert "off" in telemetry_note({})
    note = telemetry_note({"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318"})
    assert "http://127.0.0.1:4318" in note and "powerbi-embed" in note


def test_the_docs_list_each_workbook_tile_with_its_query() -> None:
    page = (REPO / "docs" / "telemetry.md").read_text()
    for title, query in _workbook_queries():
        assert f"### {title}\n\n```kusto\n{query}\n```" in page, title


@pytest.mark.parametrize(
    ("method", "url", "operation", "name"),
    [
        (
            "GET",
            "https://login.microsoftonline.com/common/userrealm/embed.user%40contoso.com?api-version=1.0",
            "userrealm",
            "GET /common/userrealm/{user}",
        ),
        (
            "POST",
            "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/oauth2/v2.0/token",
            "token",
            "POST /{id}/oauth2/v2.0/token",
        ),
        (
            "GET",
            "https://api.powerbi.com/v1.0/myorg/groups/f089354e-8366-4e18-aea3-4cb4a3a50b48/reports?$top=5000",
            "reports",
            "GET /v1.0/myorg/groups/{id}/reports",
        ),
        (
            "GET",
            "http://169.254.169.254/metadata/identity/oauth2/token?resource=x&client_id=y",
            "token",
            "GET /metadata/identity/oauth2/token",
        ),
    ],
)
def test_upstream_spans_are_named_by_template_without_ids_users_or_queries(
    method: str, url: str, operation: str, name: str
) -> None:
    from shared.http import describe

    found_operation, found_name, attributes = describe(method, url)
    assert (found_operation, found_name) == (operation, name)
    assert attributes["url.template"] == name.split(" ", 1)[1]
    assert "?" not in str(attributes) and "contoso.com?" not in str(attributes) and "embed.user" not in str(attributes)


def test_a_refresh_ahead_and_a_budget_refusal_are_counted(
    fake: FakeUpstream, env: dict[str, str], start: Any, otlp: OtlpReceiver
) -> None:
    # Tokens of 35 minutes re-minted 30 minutes ahead of the 10 they must keep: due at once, so the hit
    # after the miss re-mints in the background; a budget of one new token a minute then refuses the next.
    settings = {
        "POWERBI_TOKEN_LIFETIME_MINUTES": "35",
        "POWERBI_REFRESH_AHEAD_MINUTES": "30",
        "POWERBI_MAX_NEW_TOKENS_PER_MINUTE": "1",
    }
    host = start(_host_env({**env, **settings}, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}))
    assert host.get(f"embed/reports/{REPORT_ID}").status_code == 200
    assert host.get(f"embed/reports/{REPORT_ID}").status_code == 200
    assert len(fake.wait_for_calls(2, "POST", "GenerateToken")) == 2  # the background re-mint, waited for
    refused = host.get(f"embed/reports/{PAGINATED_REPORT_ID}")
    assert (refused.status_code, refused.json()["error"]["code"]) == (429, "throttled")
    assert host.stop() == 0, host.output

    points = otlp.points()
    minted = {p.attributes["reason"]: p.value for p in points if p.metric == "powerbi.embed.tokens_minted"}
    assert minted == {"miss": 1, "refresh": 1}
    counted = {
        (p.attributes["status_code"], p.attributes.get("error_code"))
        for p in points
        if p.metric == "powerbi.embed.requests"
    }
    assert (429, "throttled") in counted
    spans = otlp.spans()
    throttled = _requests(spans)["throttled"]
    assert not [s for s in spans if s.parent_span_id == throttled.span_id and "GenerateToken" in s.name]


def test_a_customers_request_names_its_customer_on_the_request_span(
    fake: FakeUpstream, env: dict[str, str], start: Any, otlp: OtlpReceiver
) -> None:
    # A directory of one customer, found by a claim of the principal App Service Authentication vouches for.
    customers = [{"id": "Contoso", "workspaces": [env["POWERBI_WORKSPACE_ID"]]}]
    scoped = {k: v for k, v in env.items() if k != "POWERBI_WORKSPACE_ID"}
    scoped |= {
        "WEBSITE_AUTH_ENABLED": "True",
        "POWERBI_CUSTOMERS_SOURCE": "setting",
        "POWERBI_CUSTOMER_FROM": "claim:extension_CustomerId",
        "POWERBI_CUSTOMERS": json.dumps(customers),
    }
    claims = [
        {"typ": "preferred_username", "val": "ana@contoso.com"},
        {"typ": "extension_CustomerId", "val": "contoso"},
    ]
    principal = base64.b64encode(json.dumps({"auth_typ": "aad", "claims": claims}).encode()).decode()
    headers = {"X-MS-CLIENT-PRINCIPAL": principal, "X-MS-CLIENT-PRINCIPAL-IDP": "aad"}
    host = start(_host_env(scoped, {"OTEL_EXPORTER_OTLP_ENDPOINT": otlp.url}))
    assert requests.get(f"{host.url}/embed/reports/{REPORT_ID}", headers=headers, timeout=10).status_code == 200
    assert host.get(f"embed/reports/{REPORT_ID}").status_code == 401  # no principal: no customer
    assert host.stop() == 0, host.output

    by_outcome = _requests(otlp.spans())
    assert by_outcome["miss"].attributes["powerbi.customer"] == "contoso"
    assert "powerbi.customer" not in by_outcome["unauthenticated"].attributes
