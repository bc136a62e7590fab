"""What the function tells an operator: OpenTelemetry traces, metrics and logs, when it is configured.

This module is the whole interface the rest of the code uses, and it imports nothing of OpenTelemetry:
with telemetry off (neither setting below) every call is a check of one module global, so import time
and the cache-hit path stay what they were. ``configure`` builds the pipeline (``shared.otel``, where
every OpenTelemetry import lives) once, at start:

- ``APPLICATIONINSIGHTS_CONNECTION_STRING``: Application Insights through ``azure-monitor-opentelemetry``,
  configured here, unless ``PYTHON_APPLICATIONINSIGHTS_ENABLE_TELEMETRY=true`` says the Functions worker
  configured it: then only this function's instruments are added to the worker's global providers;
- ``OTEL_EXPORTER_OTLP_ENDPOINT``: the OpenTelemetry SDK with OTLP/HTTP exporters (the standard
  ``OTEL_*`` variables apply; ``OTEL_SERVICE_NAME`` defaults to ``powerbi-embed``).

What other code calls (all cheap no-ops when off):

- ``serve(route, trace_parent, answer)``: the request's span around an HTTP route, and its
  ``powerbi.embed.requests`` count; ``annotate(kind=..., cache=...)`` adds ``powerbi.<name>`` attributes
  to the current request's span (the request count takes ``kind``, ``cache`` and ``error_code`` from them);
- ``upstream(service, operation, name, attributes)``: a span and a ``powerbi.upstream.duration`` for
  one call to Entra ID, Power BI, Redis or the customer directory;
- ``token_minted``, ``token_handed_out``, ``watch_cache``: the token and cache instruments.

Attribute values are ids, codes and outcomes the code chooses: never a URL with its query, a user name,
a token or a secret (the redaction of ``shared.redact`` applies to exported log records already).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from types import TracebackType
from typing import Protocol, TypeVar

from shared.errors import ConfigurationError
from shared.redact import register_secret
from shared.settings import TelemetrySettings, telemetry_settings

logger = logging.getLogger(__name__)

AttributeValue = str | bool | int | float | Sequence[str]


class Pipeline(Protocol):
    """What ``shared.otel`` builds: the instruments, on the global providers."""

    def serve(self, route: str, trace_parent: str | None, answer: Callable[[], R], record: RequestRecord) -> R: ...

    def upstream(self, service: str, operation: str, name: str, attributes: dict[str, AttributeValue]) -> Call: ...

    def token_minted(self, attributes: dict[str, AttributeValue]) -> None: ...

    def token_handed_out(self, seconds: float, attributes: dict[str, AttributeValue]) -> None: ...


class HasStatus(Protocol):
    @property
    def status_code(self) -> int: ...


R = TypeVar("R", bound=HasStatus)


@dataclass
class RequestRecord:
    """What the code learned about the current request: ``powerbi.*`` attributes of its span."""

    attributes: dict[str, AttributeValue] = field(default_factory=dict)


class Call:
    """One upstream call being timed: ``set`` adds a span attribute, ``status`` tells the outcome (the HTTP
    status code, ``ok``, ``not_found``...); untold, it is ``ok``, or ``error`` when the call raised. The base
    class does nothing (telemetry off)."""

    def __enter__(self) -> Call:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, traceback: TracebackType | None
    ) -> None:
        return None

    def set(self, key: str, value: AttributeValue) -> None:
        return None

    def status(self, value: str) -> None:
        return None


_OFF = Call()
_pipeline: Pipeline | None = None
_request: ContextVar[RequestRecord | None] = ContextVar("telemetry_request", default=None)
# Caches whose size the powerbi.cache.entries gauge reports: name -> size. The service registers its
# own; the last one registered under a name is the one observed.
watched: dict[str, Callable[[], int]] = {}


def enabled() -> bool:
    return _pipeline is not None


def start(env: Mapping[str, str]) -> None:
    """Configure from the app settings; a telemetry setting that is wrong is logged by name, and the
    function runs without telemetry rather than not at all."""
    try:
        settings = telemetry_settings(env)
    except ConfigurationError as error:
        logger.error("telemetry is off: %s", error.cause)
        return
    configure(settings)


def configure(settings: TelemetrySettings) -> None:
    """Build the pipeline once per process (telemetry off: nothing is imported)."""
    global _pipeline
    if settings.mode == "off" or _pipeline is not None:
        return
    register_secret(settings.connection_string, lasting=True)  # its key never reaches a log line
    from shared import otel

    _pipeline = otel.build(settings, watched)
    logger.info("telemetry: %s", settings.mode)


def serve(route: str, trace_parent: str | None, answer: Callable[[], R]) -> R:
    """``answer()`` inside the request's span (a child of the host's ``trace_parent``), counted."""
    pipeline = _pipeline
    if pipeline is None:
        return answer()
    record = RequestRecord()
    token = _request.set(record)
    try:
        return pipeline.serve(route, trace_parent, answer, record)
    finally:
        _request.reset(token)


def annotate(**attributes: AttributeValue | None) -> None:
    """Add ``powerbi.<name>`` attributes to the current request's span (None values are skipped)."""
    record = _request.get()
    if record is None:
        return
    record.attributes.update({k: v for k, v in attributes.items() if v is not None})


def upstream(service: str, operation: str, name: str = "", attributes: dict[str, AttributeValue] | None = None) -> Call:
    """A context manager timing one upstream call: its span (``name``, default ``service operation``)
    and a ``powerbi.upstream.duration`` with ``service``, ``operation`` and ``status``."""
    pipeline = _pipeline
    if pipeline is None:
        return _OFF
    return pipeline.upstream(service, operation, name or f"{service} {operation}", attributes or {})


def token_minted(kind: str, api: str, rls: bool, reason: str = "miss") -> None:
    """One embed token made by GenerateToken: ``api`` V1 or V2, ``reason`` miss or refresh."""
    if _pipeline is not None:
        _pipeline.token_minted({"kind": kind, "api": api, "rls": rls, "reason": reason})


def token_handed_out(kind: str, seconds_left: float) -> None:
    """The life left in a token handed out (cache hit or not)."""
    if _pipeline is not None:
        _pipeline.token_handed_out(max(0.0, seconds_left), {"kind": kind})


def watch_cache(name: str, size: Callable[[], int]) -> None:
    """Report ``size()`` as ``powerbi.cache.entries`` with ``cache=name`` (read at each export only)."""
    watched[name] = size
