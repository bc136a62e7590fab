"""Secrets out of the logs: a bounded registry of what the process holds, and the filter that removes it.

What is registered: the settings' password, client secret and certificate private key,
``IDENTITY_HEADER``, the shared cache's Redis password and encryption key (kept for the life of the
process), and every Entra access and refresh token MSAL gives and every embed token Power BI mints or
the shared cache hands back (kept in a bounded, least-recently-registered-first structure: tokens
expire, and the newest are the ones still in play; it holds at least as many as the token cache).

``RedactingFilter`` replaces each registered value in a log record, traceback included: it formats
the exception itself, redacts the text and clears ``exc_info``, so no handler formats the raw
traceback afterwards. A logger's filters apply only to records created on that logger, so
``install()`` puts the filter where every record passes: in the log-record factory (records of every
logger, whatever handlers are added later) and on the root logger's handlers.

Reading is lock-free and cheap (a log line is scanned once for token-shaped runs, each looked up by
its first characters), since one line is logged per request, cache hits included.
"""

from __future__ import annotations

import logging
import re
import threading
from collections import OrderedDict
from typing import Any

MASK = "[redacted]"
# Tokens kept at least; the oldest registered is forgotten first. ``hold_tokens`` raises it to what the
# token cache can hold (POWERBI_CACHE_MAX_TOKENS, plus the Entra tokens), so that no cached token is forgotten.
MIN_TOKENS = 4096
# Tokens are long runs of these characters (JWTs, base64 embed tokens, PEM lines); a run this long
# is looked up by its first PREFIX characters.
PREFIX = 24
_RUN = re.compile(r"[A-Za-z0-9\-_.~+/]{" + str(PREFIX) + ",}")
# Shorter lasting secrets would redact ordinary words; no real secret is this short.
MIN_LITERAL = 6

_lock = threading.Lock()
_capacity = MIN_TOKENS
_literals: tuple[str, ...] = ()  # lasting secrets, matched anywhere (they may hold spaces or newlines)
_tokens: OrderedDict[str, None] = OrderedDict()
_by_prefix: dict[str, tuple[str, ...]] = {}  # immutable values, swapped under the lock, read without it


def register_secret(value: str | None, *, lasting: bool = False) -> None:
    """Keep ``value`` out of every log line from now on. ``lasting`` for settings; tokens are bounded."""
    global _literals
    if not value:
        return
    with _lock:
        if lasting:
            parts = [value, *(line.strip() for line in value.splitlines())]
            new = [p for p in dict.fromkeys(parts) if len(p) >= MIN_LITERAL and p not in _literals]
            # Longest first, so that a whole key is masked before any of its lines.
            _literals = tuple(sorted((*_literals, *new), key=len, reverse=True))
            return
        if len(value) < PREFIX:
            return
        if value in _tokens:
            _tokens.move_to_end(value)
            return
        _tokens[value] = None
        _index(value, add=True)
        while len(_tokens) > _capacity:
            old, _ = _tokens.popitem(last=False)
            _index(old, add=False)


def hold_tokens(count: int) -> None:
    """Keep at least ``count`` tokens from now on (never fewer than before): the token cache's size."""
    global _capacity
    with _lock:
        _capacity = max(_capacity, count)


def capacity() -> int:
    return _capacity


def _index(token: str, *, add: bool) -> None:
    key = token[:PREFIX]
    others = tuple(t for t in _by_prefix.get(key, ()) if t != token)
    if add:
        others = (*others, token)
    if others:
        _by_prefix[key] = others
    else:
        _by_prefix.pop(key, None)


def redact(text: str) -> str:
    """``text`` with every registered secret and token (or a run that begins one) masked."""
    for literal in _literals:
        if literal in text:
            text = text.replace(literal, MASK)
    if not _by_prefix:
        return text

    def mask(match: re.Match[str]) -> str:
        run = match.group(0)
        for token in _by_prefix.get(run[:PREFIX], ()):
            if run.startswith(token):
                return MASK + run[len(token) :]
            core = run.rstrip(".")  # "abc..." : an ellipsis is not part of the token
            if len(core) >= PREFIX and token.startswith(core):  # a token cut short is still a token
                return MASK + run[len(core) :]
        return run

    return _RUN.sub(mask, text)


def forget_all() -> None:
    """Empty the registry, back to its smallest size (tests)."""
    global _literals, _capacity
    with _lock:
        _literals = ()
        _capacity = MIN_TOKENS
        _tokens.clear()
        _by_prefix.clear()


_FORMATTER = logging.Formatter()


def redact_record(record: logging.LogRecord) -> None:
    """Redact a record in place, once: its message (arguments merged in), traceback and stack."""
    if getattr(record, "_powerbi_redacted", False):
        return
    try:
        message = record.getMessage()
    except Exception:  # noqa: BLE001 - a malformed log call must still not leak its arguments
        message = f"{record.msg} (unformattable arguments)"
    record.msg, record.args = redact(message), None
    if record.exc_info:
        record.exc_text = redact(_FORMATTER.formatException(record.exc_info))
        record.exc_info = None  # no handler may format the raw traceback again
    elif record.exc_text:
        record.exc_text = redact(record.exc_text)
    if record.stack_info:
        record.stack_info = redact(record.stack_info)
    record._powerbi_redacted = True


class RedactingFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        redact_record(record)
        return True


FILTER = RedactingFilter()
_installed = False


def install() -> None:
    """Redact every log record of the process (idempotent): in the record factory, and on root's handlers."""
    global _installed
    with _lock:
        if not _installed:
            previous = logging.getLogRecordFactory()

            def factory(*args: Any, **kwargs: Any) -> logging.LogRecord:
                record = previous(*args, **kwargs)
                redact_record(record)
                return record

            logging.setLogRecordFactory(factory)
            _installed = True
    for handler in logging.getLogger().handlers:
        if FILTER not in handler.filters:
            handler.addFilter(FILTER)
