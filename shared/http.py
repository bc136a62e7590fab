"""The worker's one HTTP session, with bounded retries and timeouts cut to the deadline.

Every upstream call (Entra ID through MSAL, and Power BI) goes through ``HttpClient``:

- one pooled ``requests.Session`` per worker process, so TLS connections are reused;
- 429, 5xx and connection failures are retried by urllib3's ``Retry`` policy (counts,
  exponential back-off with jitter), but the
  loop is ours, so each attempt gets connect and read timeouts cut to what is left of
  the request's deadline and no wait ever runs past it;
- a read timeout is not retried: its timeout was already all the time there was;
- ``Retry-After`` in seconds or as an HTTP date, counted on the injected clock; a malformed one
  (``1.5``, ``soon``, a broken date) counts as absent: the back-off applies (urllib3 would raise
  ``InvalidHeader``);
- each call is counted into the current ``CallContext`` (calls, time, Power BI
  RequestIds) for the request's single log line;
- each attempt is one upstream call for ``shared.telemetry`` (a span named by the URL's template,
  ids and user names replaced, no query string; and its duration).
"""

from __future__ import annotations

import email.utils
import logging
import re
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import UTC
from typing import Any
from urllib.parse import urlsplit

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError
from urllib3.util.retry import Retry

from shared import telemetry
from shared.clock import SYSTEM_CLOCK, Clock, Deadline
from shared.errors import UpstreamTimeout, UpstreamUnreachable

logger = logging.getLogger(__name__)

CONNECT_TIMEOUT = 3.05  # a little over a TCP retransmit window
READ_TIMEOUT = 10.0
# Below this, another attempt could not get an answer back in time.
MIN_ATTEMPT_SECONDS = 0.5
DEFAULT_DEADLINE_SECONDS = 20.0

# GenerateToken is a POST, but repeating it only mints another token, so it is safe
# to retry; so is the token endpoint's POST.
RETRY_POLICY = Retry(
    total=3,
    allowed_methods=frozenset({"GET", "POST"}),
    status_forcelist=frozenset({429, 500, 502, 503, 504}),
    backoff_factor=0.5,
    backoff_jitter=0.5,
    backoff_max=8,
    respect_retry_after_header=True,
    raise_on_status=False,
)


@dataclass
class CallContext:
    """What one incoming request spent upstream, and by when it must be done."""

    deadline: Deadline
    upstream_calls: int = 0
    upstream_seconds: float = 0.0
    request_ids: list[str] = field(default_factory=list)


_current: ContextVar[CallContext | None] = ContextVar("upstream_call_context", default=None)


@contextmanager
def call_context(deadline: Deadline) -> Iterator[CallContext]:
    context = CallContext(deadline)
    token = _current.set(context)
    try:
        yield context
    finally:
        _current.reset(token)


def current_context(clock: Clock) -> CallContext:
    """The request's context, or a fresh one with the default deadline outside a request."""
    return _current.get() or CallContext(Deadline.after(clock, DEFAULT_DEADLINE_SECONDS))


def new_session(pool_size: int = 32) -> requests.Session:
    session = requests.Session()
    # Retries are done by HttpClient (see the module docstring), not by the adapter.
    adapter = HTTPAdapter(pool_connections=4, pool_maxsize=pool_size, max_retries=0)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session


class HttpClient:
    def __init__(
        self,
        session: requests.Session | None = None,
        clock: Clock = SYSTEM_CLOCK,
        retry: Retry = RETRY_POLICY,
    ) -> None:
        self.session = session or new_session()
        self.clock = clock
        self.retry = retry

    def request(self, method: str, url: str, *, service: str = "http", **kwargs: Any) -> requests.Response:
        """Send with retries inside the deadline; the last response is returned as it is.

        ``service`` names the upstream in telemetry (``entra``, ``powerbi``)."""
        kwargs.pop("timeout", None)  # ours is derived from the deadline
        context = current_context(self.clock)
        retry = self.retry
        operation, name, attributes = describe(method, url)
        attempt = 0
        while True:
            remaining = context.deadline.remaining()
            if remaining <= 0:
                raise UpstreamTimeout(
                    "Power BI or Entra ID did not answer in time.",
                    cause=f"deadline passed before {method} {_host(url)}",
                )
            started = self.clock.monotonic()
            response: requests.Response | None = None
            try:
                with telemetry.upstream(service, operation, name, attributes) as call:
                    if attempt:
                        call.set("http.request.resend_count", attempt)
                    response = self.session.request(
                        method, url, timeout=(min(CONNECT_TIMEOUT, remaining), min(READ_TIMEOUT, remaining)), **kwargs
                    )
                    call.status(str(response.status_code))
                    if request_id := response.headers.get("RequestId"):
                        call.set("powerbi.request_id", request_id)
            except requests.ReadTimeout as exc:
                raise UpstreamTimeout(
                    "Power BI or Entra ID did not answer in time.",
                    cause=f"read timeout on {method} {_host(url)}",
                ) from exc
            except requests.ConnectionError as exc:
                error: Exception | None = exc
            else:
                error = None
                request_id = response.headers.get("RequestId")
                if request_id:
                    context.request_ids.append(request_id)
            finally:
                attempt += 1
                context.upstream_calls += 1
                context.upstream_seconds += self.clock.monotonic() - started

            told = None if response is None else retry_after_seconds(response.headers.get("Retry-After"), self.clock)
            if response is not None and not retry.is_retry(method, response.status_code, told is not None):
                return response
            try:
                retry = retry.increment(
                    method, url, response=response.raw if response is not None else None, error=error
                )
            except MaxRetryError:
                return self._give_up(method, url, response, error)
            delay = told if told is not None else retry.get_backoff_time()
            if delay + MIN_ATTEMPT_SECONDS > context.deadline.remaining():
                return self._give_up(method, url, response, error)
            logger.debug("retrying %s %s in %.2fs", method, _host(url), delay)
            if delay > 0:
                self.clock.sleep(delay)

    @staticmethod
    def _give_up(
        method: str, url: str, response: requests.Response | None, error: Exception | None
    ) -> requests.Response:
        if response is not None:
            return response
        if isinstance(error, requests.Timeout):
            raise UpstreamTimeout(
                "Power BI or Entra ID did not answer in time.", cause=f"connect timeout on {method} {_host(url)}"
            ) from error
        raise UpstreamUnreachable(
            "Power BI or Entra ID could not be reached.",
            cause=f"connection failed on {method} {_host(url)}: {type(error).__name__}",
        ) from error

    def close(self) -> None:
        self.session.close()


def retry_after_seconds(value: str | None, clock: Clock) -> float | None:
    """Seconds a ``Retry-After`` header asks for: delta-seconds, or an HTTP date counted from ``clock``'s
    now (never less than 0); None when it is absent or malformed, so that the caller's own back-off applies.

    Not urllib3's parser: it counts a date from the system clock, and an injected clock must decide."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        logger.debug("ignored a malformed Retry-After header")
        return None
    if when.tzinfo is None:  # "-0000": UTC with no claim about the local zone (RFC 5322)
        when = when.replace(tzinfo=UTC)
    return max(0.0, when.timestamp() - clock.now())


def _host(url: str) -> str:
    """Scheme, host and path only: a query string is never logged."""
    return url.split("?", 1)[0]


_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def describe(method: str, url: str) -> tuple[str, str, dict[str, telemetry.AttributeValue]]:
    """A call's telemetry: (operation, span name, attributes). The path becomes a template (GUIDs
    ``{id}``, a user-realm user ``{user}``) and the query string is left out: neither an id list nor a
    user name reaches a span. The operation is the template's last named segment (``GenerateToken``,
    ``reports``, ``token``)."""
    parts = urlsplit(url)
    segments: list[str] = []
    for segment in parts.path.split("/"):
        if _GUID.match(segment):
            segments.append("{id}")
        elif "@" in segment or (segments and segments[-1].lower() == "userrealm"):
            segments.append("{user}")
        else:
            segments.append(segment)
    template = "/".join(segments) or "/"
    named = [s for s in segments if s and not s.startswith("{")]
    attributes: dict[str, telemetry.AttributeValue] = {
        "http.request.method": method,
        "server.address": parts.hostname or "",
        "url.template": template,
    }
    if parts.port:
        attributes["server.port"] = parts.port
    return (named[-1] if named else "/"), f"{method} {template}", attributes
