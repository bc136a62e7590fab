"""Telemetry backends for the tests: an OTLP/HTTP receiver and an Application Insights ingestion stand-in.

``OtlpReceiver`` answers ``POST /v1/traces``, ``/v1/metrics`` and ``/v1/logs`` as an OpenTelemetry
collector does (OTLP/HTTP, protobuf), decoding each export with ``opentelemetry-proto``.
``IngestionStandIn`` answers ``POST /v2.1/track`` as Application Insights' ingestion endpoint does
(JSON envelopes, one per line or as an array, possibly gzip'd), the address a connection string's
``IngestionEndpoint`` names. Both keep every byte received, to be searched for secrets, and can hang
(accept and not answer until released) to stand for a slow backend.
"""

from __future__ import annotations

import gzip
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from opentelemetry.proto.collector.logs.v1.logs_service_pb2 import (
    ExportLogsServiceRequest,
    ExportLogsServiceResponse,
)
from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
    ExportMetricsServiceRequest,
    ExportMetricsServiceResponse,
)
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue


class _Server:
    """A loopback HTTP server on its own port that keeps the raw bodies it was sent."""

    def __init__(self) -> None:
        self.raw: list[bytes] = []
        self.paths: list[str] = []
        self.release = threading.Event()
        self.release.set()
        self.lock = threading.Lock()
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                if self.headers.get("Content-Encoding", "").lower() == "gzip":
                    body = gzip.decompress(body)
                owner.release.wait(60)
                status, content_type, answer = owner.receive(self.path, body)
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                self.wfile.write(answer)

            def log_message(self, format: str, *args: Any) -> None:
                return None

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def receive(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        raise NotImplementedError

    def hang(self) -> None:
        """Accept exports but answer none until ``release.set()``."""
        self.release.clear()

    def all_bytes(self) -> bytes:
        with self.lock:
            return b"\n".join(self.raw)

    def __enter__(self) -> _Server:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release.set()
        self.server.shutdown()
        self.server.server_close()


def value(any_value: AnyValue) -> Any:
    kind = any_value.WhichOneof("value")
    if kind == "array_value":
        return [value(v) for v in any_value.array_value.values]
    return getattr(any_value, kind) if kind else None


def attributes(pairs: Iterator[KeyValue] | Any) -> dict[str, Any]:
    return {pair.key: value(pair.value) for pair in pairs}


@dataclass(frozen=True)
class Span:
    name: str
    kind: int
    trace_id: str
    span_id: str
    parent_span_id: str
    attributes: dict[str, Any]
    status_code: int
    resource: dict[str, Any]


@dataclass(frozen=True)
class Point:
    metric: str
    attributes: dict[str, Any]
    value: float  # sum, gauge value or histogram sum
    count: int  # histogram count (1 for others)


class OtlpReceiver(_Server):
    def __init__(self) -> None:
        super().__init__()
        self.traces: list[ExportTraceServiceRequest] = []
        self.metrics: list[ExportMetricsServiceRequest] = []
        self.logs: list[ExportLogsServiceRequest] = []

    def receive(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        with self.lock:
            self.raw.append(body)
            self.paths.append(path)
            if path == "/v1/traces":
                self.traces.append(ExportTraceServiceRequest.FromString(body))
                answer = ExportTraceServiceResponse().SerializeToString()
            elif path == "/v1/metrics":
                self.metrics.append(ExportMetricsServiceRequest.FromString(body))
                answer = ExportMetricsServiceResponse().SerializeToString()
            elif path == "/v1/logs":
                self.logs.append(ExportLogsServiceRequest.FromString(body))
                answer = ExportLogsServiceResponse().SerializeToString()
            else:
                return 404, "text/plain", b"not found"
        return 200, "application/x-protobuf", answer

    def spans(self) -> list[Span]:
        found = []
        for request in self.traces:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource.attributes)
                for scope in resource_spans.scope_spans:
                    for s in scope.spans:
                        found.append(
                            Span(
                                s.name,
                                s.kind,
                                s.trace_id.hex(),
                                s.span_id.hex(),
                                s.parent_span_id.hex(),
                                attributes(s.attributes),
                                s.status.code,
                                resource,
                            )
                        )
        return found

    def points(self) -> list[Point]:
        found = []
        for request in self.metrics:
            for resource_metrics in request.resource_metrics:
                for scope in resource_metrics.scope_metrics:
                    for metric in scope.metrics:
                        kind = metric.WhichOneof("data")
                        data = getattr(metric, kind)
                        for p in data.data_points:
                            if kind == "histogram":
                                found.append(Point(metric.name, attributes(p.attributes), p.sum, p.count))
                            else:
                                number = p.as_double if p.WhichOneof("value") == "as_double" else p.as_int
                                found.append(Point(metric.name, attributes(p.attributes), number, 1))
        return found

    def log_records(self) -> list[tuple[str, str, str]]:
        """(body, trace id, span id) of every exported log record."""
        return [
            (record.body.string_value, record.trace_id.hex(), record.span_id.hex())
            for request in self.logs
            for resource_logs in request.resource_logs
            for scope in resource_logs.scope_logs
            for record in scope.log_records
        ]


class IngestionStandIn(_Server):
    """Application Insights' ingestion endpoint (``/v2.1/track``), as the Azure Monitor exporter posts to it."""

    def __init__(self) -> None:
        super().__init__()
        self.envelopes: list[dict[str, Any]] = []

    def receive(self, path: str, body: bytes) -> tuple[int, str, bytes]:
        if not path.startswith("/v2.1/track"):
            return 404, "text/plain", b"not found"
        text = body.decode("utf-8").strip()
        items = json.loads(text) if text.startswith("[") else [json.loads(line) for line in text.splitlines()]
        with self.lock:
            self.raw.append(body)
            self.paths.append(path)
            self.envelopes.extend(items)
        answer = {"itemsReceived": len(items), "itemsAccepted": len(items), "errors": []}
        return 200, "application/json", json.dumps(answer).encode()

    def of_type(self, base_type: str) -> list[dict[str, Any]]:
        """``baseData`` of each envelope of ``base_type`` (RequestData, RemoteDependencyData, MetricData,
        MessageData), with the envelope's tags under ``"tags"``."""
        with self.lock:
            return [
                {**e["data"]["baseData"], "tags": e.get("tags", {})}
                for e in self.envelopes
                if e.get("data", {}).get("baseType") == base_type
            ]
