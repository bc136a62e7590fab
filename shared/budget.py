"""A budget for new embed tokens: at most so many GenerateToken calls a minute, overall and per user.

Whoever holds the function key could otherwise make the function mint without limit (every subset
of the allowed reports is a key of its own), spending the capacity's embed-token quota and evicting
real users' tokens. ``Budget.take`` is asked before a GenerateToken, never on a cache hit:

- at most POWERBI_MAX_NEW_TOKENS_PER_MINUTE in any 60 seconds (a sliding window), per instance, or
  for the whole fleet with the shared cache (a sorted set per window in Redis, checked and counted
  in one script);
- at most POWERBI_MAX_NEW_TOKENS_PER_USER_PER_MINUTE per signed-in principal id (only an id the
  platform vouches for: one a caller could choose would let them spend someone else's);
- a background refresh of a key already cached comes first: it is counted, never refused;
- over budget is ``429 throttled`` with ``Retry-After``: the seconds until the oldest call in the
  window leaves it, that is, to the next free slot.

When Redis is away (its breaker open) each instance counts for itself.
"""

from __future__ import annotations

import logging
import math
import secrets
import threading
from collections import deque
from typing import TYPE_CHECKING, Any

from cachetools import LRUCache

from shared.clock import Clock
from shared.errors import Throttled

if TYPE_CHECKING:
    from shared.shared_cache import SharedCache

logger = logging.getLogger(__name__)

WINDOW_SECONDS = 60.0
MAX_USERS = 10_000  # principals whose window is kept in process; the least recently seen go first
# KEYS: the overall window, then the user's (if any). ARGV: now, window, overall limit, user limit,
# a unique member, 1 to count without refusing. Answers {0, 0} when counted, else {seconds to the next
# slot, 1 for the overall window or 2 for the user's}.
_TAKE = """
local now, window = tonumber(ARGV[1]), tonumber(ARGV[2])
local limits = {tonumber(ARGV[3]), tonumber(ARGV[4])}
for i, key in ipairs(KEYS) do redis.call('zremrangebyscore', key, '-inf', now - window) end
if ARGV[6] ~= '1' then
  for i, key in ipairs(KEYS) do
    if redis.call('zcard', key) >= limits[i] then
      local oldest = redis.call('zrange', key, 0, 0, 'withscores')[2]
      return {math.max(1, math.ceil(tonumber(oldest) + window - now)), i}
    end
  end
end
for i, key in ipairs(KEYS) do
  redis.call('zadd', key, now, ARGV[5])
  redis.call('pexpire', key, math.ceil(window * 1000))
end
return {0, 0}
"""


class Budget:
    def __init__(
        self, per_minute: int, per_user_per_minute: int, clock: Clock, shared: SharedCache | None = None
    ) -> None:
        self.per_minute = per_minute
        self.per_user_per_minute = per_user_per_minute
        self._clock = clock
        self._shared = shared
        self._script: Any = shared.client.register_script(_TAKE) if shared is not None else None
        self._lock = threading.Lock()
        self._overall: deque[float] = deque()
        self._users: LRUCache[str, deque[float]] = LRUCache(MAX_USERS)

    def take(self, principal: str | None = None, *, background: bool = False) -> None:
        """Count one GenerateToken, or raise ``Throttled`` (429) when over budget (a background refresh is
        counted, never refused)."""
        answer = self._take_shared(principal, background)
        wait, which = answer if answer is not None else self._take_local(principal, background)
        if wait:
            spent = (
                f"{self.per_user_per_minute} a minute for this user" if which == 2 else f"{self.per_minute} a minute"
            )
            raise Throttled(
                "Too many new embed tokens; try again after the time in Retry-After.",
                status=429,
                retry_after=wait,
                cause=f"new-token budget spent ({spent} a minute); Retry-After {wait} s",
            )

    def _take_local(self, principal: str | None, background: bool) -> tuple[int, int]:
        now = self._clock.now()
        with self._lock:
            windows = [self._overall]
            limits = [self.per_minute]
            if principal:
                windows.append(self._users.setdefault(principal, deque()))
                limits.append(self.per_user_per_minute)
            for window in windows:
                while window and window[0] <= now - WINDOW_SECONDS:
                    window.popleft()
            if not background:
                for which, (window, limit) in enumerate(zip(windows, limits, strict=True), start=1):
                    if len(window) >= limit:
                        return max(1, math.ceil(window[0] + WINDOW_SECONDS - now)), which
            for window in windows:
                window.append(now)
        return 0, 0

    def _take_shared(self, principal: str | None, background: bool) -> tuple[int, int] | None:
        """The fleet's answer (as ``_take_local``'s), or None when Redis cannot be asked."""
        from shared.shared_cache import _Unavailable

        shared = self._shared
        if shared is None:
            return None
        keys = [shared.seal.key("budget", "overall")]
        if principal:
            keys.append(shared.seal.key("budget", f"user\n{principal}"))
        args = [
            repr(self._clock.now()),
            repr(WINDOW_SECONDS),
            self.per_minute,
            self.per_user_per_minute,
            secrets.token_hex(8),
            1 if background else 0,
        ]
        try:
            wait, which = shared.breaker.call("EVALSHA", lambda r: self._script(keys=keys, args=args, client=r))
        except _Unavailable:
            return None
        return int(wait), int(which)
