"""The OpenTelemetry pipeline behind ``shared.telemetry``: imported only when telemetry is configured.

``build`` sets up where telemetry goes and returns the instruments:

- ``otlp``: a ``TracerProvider``, ``MeterProvider`` and ``LoggerProvider`` with the OTLP/HTTP exporters,
  as the global providers; the standard ``OTEL_*`` variables apply (endpoint, headers, timeouts, export
  interval, batch sizes), with ``OTEL_SERVICE_NAME`` defaulting to ``powerbi-embed``;
- ``azure_monitor``: ``configure_azure_monitor`` of ``azure-monitor-opentelemetry``, with its HTTP and
  Azure SDK instrumentations off (every upstream call has this function's own span, whose attributes
  hold no URL query and no user name; MSAL's user-realm URL holds the master user's name);
- ``worker``: the Functions worker configured the distro; only the instruments are added, to its global
  providers (its HTTP instrumentations are undone, for the same reason).

Log records of warnings and errors are exported, with the trace and span ids of the request they
belong to. Export is in the background: spans and logs go through the SDK's bounded batch queues (full: dropped,
never waited for), metrics through a periodic reader, each export with a short timeout; the providers
flush at process exit (the SDK's atexit shutdown). A backend that is down or slow costs a request nothing.
"""

from __future__ import annotations

import importlib
import logging
import time
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any

from opentelemetry import context, metrics, trace
from opentelemetry.metrics import CallbackOptions, Observation
from opentelemetry.trace import SpanKind, Status, StatusCode
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from shared import telemetry
from shared.settings import TelemetrySettings
from shared.telemetry import AttributeValue, R, RequestRecord

logger = logging.getLogger(__name__)

SCOPE = "powerbi-embed"
# Warnings and errors are exported as log records (with their trace and span ids); each request's info
# line is not: its span carries the same facts, and the host's own log keeps the line.
EXPORTED_LOG_LEVEL = logging.WARNING
UPSTREAM_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0)
REMAINING_BUCKETS = (60, 300, 600, 900, 1200, 1800, 2700, 3600, 5400, 7200)
# What the distro instruments that this function covers with its own spans, or does not use.
DISTRO_OFF = ("azure_sdk", "django", "fastapi", "flask", "psycopg2", "requests", "urllib", "urllib3", "httpx")
HTTP_INSTRUMENTORS = (
    ("opentelemetry.instrumentation.requests", "RequestsInstrumentor"),
    ("opentelemetry.instrumentation.urllib3", "URLLib3Instrumentor"),
    ("opentelemetry.instrumentation.urllib", "URLLibInstrumentor"),
)


def build(settings: TelemetrySettings, watched: dict[str, Callable[[], int]]) -> OtelPipeline:
    if settings.mode == "otlp":
        _configure_otlp(settings)
    elif settings.mode == "azure_monitor":
        _configure_azure_monitor(settings)
    else:
        _undo_http_instrumentation()
    return OtelPipeline(watched)


def _resource(settings: TelemetrySettings) -> Any:
    from opentelemetry.sdk.resources import SERVICE_NAME, Resource

    return Resource.create({SERVICE_NAME: settings.service_name})


def _configure_otlp(settings: TelemetrySettings) -> None:
    from opentelemetry._logs import set_logger_provider
    from opentelemetry.exporter.otlp.proto.http._log_exporter import OTLPLogExporter
    from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk._logs import LoggerProvider, LoggingHandler
    from opentelemetry.sdk._logs.export import BatchLogRecordProcessor
    from opentelemetry.sdk.metrics import AlwaysOffExemplarFilter, MeterProvider
    from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = _resource(settings)
    timeout = settings.export_timeout_seconds
    tracer_provider = TracerProvider(resource=resource)
    tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(timeout=timeout)))
    trace.set_tracer_provider(tracer_provider)
    reader = PeriodicExportingMetricReader(OTLPMetricExporter(timeout=timeout))
    exemplars = None if settings.exemplars else AlwaysOffExemplarFilter()
    metrics.set_meter_provider(MeterProvider(resource=resource, metric_readers=[reader], exemplar_filter=exemplars))
    logger_provider = LoggerProvider(resource=resource)
    logger_provider.add_log_record_processor(BatchLogRecordProcessor(OTLPLogExporter(timeout=timeout)))
    set_logger_provider(logger_provider)
    # Records are redacted when they are made (shared.redact's record factory), before this handler.
    logging.getLogger().addHandler(LoggingHandler(level=EXPORTED_LOG_LEVEL, logger_provider=logger_provider))


def _configure_azure_monitor(settings: TelemetrySettings) -> None:
    from azure.monitor.opentelemetry import configure_azure_monitor

    configure_azure_monitor(
        connection_string=settings.connection_string,
        resource=_resource(settings),
        enable_live_metrics=False,
        # The distro's process counters add a processor to every span; the host reports the process.
        enable_performance_counters=False,
        instrumentation_options={name: {"enabled": False} for name in DISTRO_OFF},
    )


def _undo_http_instrumentation() -> None:
    """The worker's distro instruments requests, urllib3 and urllib, whose spans carry whole URLs
    (MSAL's user-realm URL has the master user's name): this function's own spans replace them."""
    for module, name in HTTP_INSTRUMENTORS:
        try:
            instrumentor = getattr(importlib.import_module(module), name)()
        except ImportError:
            continue
        if instrumentor.is_instrumented_by_opentelemetry:
            instrumentor.uninstrument()


class OtelCall(telemetry.Call):
    """One upstream call: a client span, and its duration on exit."""

    def __init__(self, pipeline: OtelPipeline, service: str, operation: str, span: Any) -> None:
        self._pipeline = pipeline
        self._service = service
        self._operation = operation
        self._span = span
        self._status: str | None = None
        self._scope: Any = None
        self._started = 0.0

    def __enter__(self) -> OtelCall:
        self._scope = trace.use_span(self._span, end_on_exit=True, record_exception=False)
        self._scope.__enter__()
        self._started = time.perf_counter()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        elapsed = time.perf_counter() - self._started
        status = self._status
        if status is None:  # no outcome was told: it ended as it ended
            status = "ok" if kind is None else "error"
            if kind is not None:
                self._span.set_attribute("error.type", kind.__name__)
                self._span.set_status(Status(StatusCode.ERROR))
        attributes = {"service": self._service, "operation": self._operation, "status": status}
        self._pipeline.upstream_duration.record(elapsed, attributes)
        self._scope.__exit__(None, None, None)

    def set(self, key: str, value: AttributeValue) -> None:
        self._span.set_attribute(key, value)

    def status(self, value: str) -> None:
        self._status = value
        if not value.isdigit():
            return
        code = int(value)
        self._span.set_attribute("http.response.status_code", code)
        if code >= 400:
            self._span.set_attribute("error.type", value)
            self._span.set_status(Status(StatusCode.ERROR))


class OtelPipeline:
    """The function's instruments, on the global providers."""

    def __init__(self, watched: dict[str, Callable[[], int]]) -> None:
        self.tracer = trace.get_tracer(SCOPE)
        meter = metrics.get_meter(SCOPE)
        self.requests = meter.create_counter(
            "powerbi.embed.requests", unit="{request}", description="Embed requests answered"
        )
        self.minted = meter.create_counter(
            "powerbi.embed.tokens_minted", unit="{token}", description="Embed tokens made by GenerateToken"
        )
        self.upstream_duration = meter.create_histogram(
            "powerbi.upstream.duration",
            unit="s",
            description="Time of each call to Entra ID, Power BI, Redis or the customer directory",
            explicit_bucket_boundaries_advisory=UPSTREAM_BUCKETS,
        )
        self.remaining = meter.create_histogram(
            "powerbi.embed.token_remaining",
            unit="s",
            description="Life left in each embed token handed out",
            explicit_bucket_boundaries_advisory=REMAINING_BUCKETS,
        )
        self._watched = watched
        meter.create_observable_gauge(
            "powerbi.cache.entries", callbacks=[self._observe], unit="{entry}", description="Entries in each cache"
        )
        self._propagator = TraceContextTextMapPropagator()

    def _observe(self, options: CallbackOptions) -> Iterable[Observation]:
        return [Observation(size(), {"cache": name}) for name, size in list(self._watched.items())]

    def serve(self, route: str, trace_parent: str | None, answer: Callable[[], R], record: RequestRecord) -> R:
        # start_span and one set_attributes, not start_as_current_span and one call per attribute:
        # this runs on every request, cache hits included, and the SDK's span is most of its cost.
        parent = self._propagator.extract({"traceparent": trace_parent}) if trace_parent else None
        span = self.tracer.start_span(
            f"GET {route}",
            context=parent,
            kind=SpanKind.SERVER,
            attributes={"http.request.method": "GET", "http.route": route},
            record_exception=False,
        )
        token = context.attach(trace.set_span_in_context(span))
        try:
            response = answer()
        finally:
            context.detach(token)
        status = response.status_code
        found = record.attributes
        if span.is_recording():  # not when the sampler dropped it
            attributes: dict[str, AttributeValue] = {f"powerbi.{key}": value for key, value in found.items()}
            attributes["http.response.status_code"] = status
            if "error_code" in found:
                attributes["error.type"] = str(found["error_code"])
            span.set_attributes(attributes)
            if status >= 500:
                span.set_status(Status(StatusCode.ERROR))
        span.end()
        counted: dict[str, AttributeValue] = {"status_code": status}
        counted |= {key: found[key] for key in ("kind", "error_code", "cache") if key in found}
        self.requests.add(1, counted)
        return response

    def upstream(self, service: str, operation: str, name: str, attributes: dict[str, AttributeValue]) -> OtelCall:
        attributes = {"powerbi.service": service, "powerbi.operation": operation, **attributes}
        span = self.tracer.start_span(name, kind=SpanKind.CLIENT, attributes=attributes, record_exception=False)
        return OtelCall(self, service, operation, span)

    def token_minted(self, attributes: dict[str, AttributeValue]) -> None:
        self.minted.add(1, attributes)

    def token_handed_out(self, seconds: float, attributes: dict[str, AttributeValue]) -> None:
        self.remaining.record(seconds, attributes)
