"""The shared cache: embed tokens and catalogs kept in Redis for every instance of the app.

It sits behind the in-process caches (a hit there costs no network call) and in front
of Power BI. It is an optimisation only, never a reason to fail:

- every Redis operation has a short timeout (POWERBI_CACHE_TIMEOUT_MS, 100 ms by default)
  and is not retried;
- when Redis is unreachable, slow or refuses our credentials, a circuit breaker stops
  trying it for ``BREAKER_SECONDS``: one log line when it goes away, one when it is back;
  the request carries on with the in-process cache and Power BI;
- an entry that cannot be decrypted or read is a miss.

Nothing in Redis is readable: a value is sealed with AES-256-GCM under
POWERBI_CACHE_ENCRYPTION_KEY, with the Redis key as associated data (an entry copied to
another key does not open); a key is ``pbi:<namespace>:<kind>:<digest>`` where both the
namespace (Power BI API URL, tenant, client id or managed identity, profile) and the
digest (the cache key, which may hold a user name) are HMACs under a key derived from the
encryption key. Two function apps sharing one Redis never read each other's entries.

Concurrent cold requests on different instances make one upstream call: ``fetch`` takes
a short fleet-wide lock (``SET NX PX``; released only by its owner, through a
compare-and-delete script; expiring by itself if the owner dies), and the others wait
within their deadline for the entry, then read it.

Entra ID tokens are never put here: each process keeps them in MSAL's cache (see docs/architecture.md).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar

from shared.clock import SYSTEM_CLOCK, Clock
from shared.settings import Settings, SharedCacheSettings

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

T = TypeVar("T")
Source = Literal["shared", "created"]

# How long Redis is left alone after a failure before it is tried again (POWERBI_CACHE_BREAKER_SECONDS).
BREAKER_SECONDS = 30.0
# How often a request waiting for another instance's upstream call looks for the entry.
POLL_SECONDS = 0.05
# A waiter gives up waiting, and calls upstream itself, with this share of its time left.
WAIT_RESERVE = 0.5
# The scope of Azure Managed Redis for Entra ID tokens (a managed identity asks for the resource).
REDIS_RESOURCE = "https://redis.azure.com"
ENTRA_TOKEN_TIMEOUT_MS = 1000  # for the managed identity endpoint's answer, per attempt
_FORMAT = b"\x01"  # version of the sealed-value layout: format byte, 12-byte nonce, AES-GCM output
_NONCE_BYTES = 12
# Delete the lock only if it still holds our token: after it expired, another instance may own it.
_RELEASE = "if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end return 0"


@dataclass(frozen=True)
class Codec(Generic[T]):
    """How a value of one kind goes to Redis and back, and how long it may be shared."""

    dumps: Callable[[T], bytes]
    loads: Callable[[bytes], T]  # raises ValueError (or KeyError, TypeError) for what it cannot read
    ttl: Callable[[T], float]  # seconds the shared entry may live; 0 or less: not shared


@dataclass(frozen=True)
class Probe:
    """What the doctor found: one line per check, and whether all passed."""

    ok: bool
    lines: tuple[tuple[bool, str], ...]


class _Unavailable(Exception):
    """Redis is not to be used now (breaker open, or the operation just failed)."""


def namespace_material(settings: Settings) -> str:
    """What separates one app's entries from another's on a shared Redis."""
    if settings.sign_in.mode == "ManagedIdentity":
        who = f"managed-identity:{settings.sign_in.managed_identity_client_id or 'system-assigned'}"
    else:
        who = f"client:{settings.sign_in.client_id}"
    return "\n".join(
        (settings.powerbi.api_url.lower(), settings.sign_in.tenant_id.lower(), who, settings.sign_in.profile_id or "")
    )


class SharedCache:
    """Sealed entries and fleet-wide locks on one Redis, behind a circuit breaker."""

    def __init__(
        self,
        client: redis.Redis,
        encryption_key: bytes,
        namespace: str,
        clock: Clock = SYSTEM_CLOCK,
        *,
        breaker_seconds: float = BREAKER_SECONDS,
    ) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self.client = client
        self.clock = clock
        self.breaker_seconds = breaker_seconds
        self._aead = AESGCM(encryption_key)
        # Key names are HMACs under a key of their own, derived from the encryption key, so that a
        # dump cannot be searched for a guessed user name's hash.
        self._names = hmac.new(encryption_key, b"powerbi-embed shared cache key names", hashlib.sha256).digest()
        self.prefix = f"pbi:{self._digest(namespace)[:32]}:"
        self._release: Any = client.register_script(_RELEASE)
        self._lock = threading.Lock()
        self._closed_at: float | None = None  # monotonic time until which Redis is left alone
        self._down = False
        self._warned_credentials = False

    @classmethod
    def create(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> SharedCache | None:
        """The shared cache the settings describe, or None without POWERBI_CACHE_URL. Makes no network call."""
        config = settings.shared_cache
        if config is None:
            return None
        return cls(
            connect(config, settings),
            config.encryption_key,
            namespace_material(settings),
            clock,
            breaker_seconds=config.breaker_seconds,
        )

    # -- keys and sealing -------------------------------------------------------------------

    def _digest(self, text: str) -> str:
        return hmac.new(self._names, text.encode("utf-8"), hashlib.sha256).hexdigest()

    def key(self, kind: str, key: str) -> str:
        """The Redis key for a cache key of a kind: no part of ``key`` in clear."""
        return f"{self.prefix}{kind}:{self._digest(kind + chr(10) + key)}"

    def seal(self, redis_key: str, plain: bytes) -> bytes:
        nonce = os.urandom(_NONCE_BYTES)
        return _FORMAT + nonce + self._aead.encrypt(nonce, plain, redis_key.encode("utf-8"))

    def open(self, redis_key: str, sealed: bytes) -> bytes | None:
        """The plain value, or None when it was not sealed by us for this key (corrupt, other key, other app)."""
        from cryptography.exceptions import InvalidTag

        if len(sealed) < 1 + _NONCE_BYTES + 16 or sealed[:1] != _FORMAT:
            return None
        nonce, body = sealed[1 : 1 + _NONCE_BYTES], sealed[1 + _NONCE_BYTES :]
        try:
            return self._aead.decrypt(nonce, body, redis_key.encode("utf-8"))
        except InvalidTag:
            return None

    # -- the circuit breaker ----------------------------------------------------------------

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis failed less than ``breaker_seconds`` ago)."""
        with self._lock:
            return self._closed_at is None or self.clock.monotonic() >= self._closed_at

    def _call(self, operation: Callable[[redis.Redis], T]) -> T:
        if not self.available:
            raise _Unavailable
        try:
            result = operation(self.client)
        except Exception as exc:  # whatever Redis does, the request goes on without it
            self._failed(exc)
            raise _Unavailable from exc
        self._succeeded()
        return result

    def _failed(self, exc: BaseException) -> None:
        self._disconnect()
        credentials = _is_credential_error(exc)
        with self._lock:
            self._closed_at = self.clock.monotonic() + self.breaker_seconds
            first, self._down = not self._down, True
            warn_credentials = credentials and not self._warned_credentials
            self._warned_credentials = self._warned_credentials or credentials
        if warn_credentials:
            logger.warning(
                "configuration: the shared cache (Redis) refused the function's credentials (%s): check the "
                "password in POWERBI_CACHE_URL or, without one, the access policy assignment of the app's "
                "managed identity on the cache; serving without the shared cache, trying again every %.0f s",
                type(exc).__name__,
                self.breaker_seconds,
            )
        elif first:
            logger.warning(
                "shared cache (Redis) unavailable (%s): serving from the in-process cache and Power BI; "
                "trying again after %.0f s",
                _describe(exc),
                self.breaker_seconds,
            )

    def _disconnect(self) -> None:
        """Drop pooled connections after a failure: a later try starts afresh (and leaves no socket open)."""
        try:
            self.client.connection_pool.disconnect()
        except Exception:  # closing what is already broken
            logger.debug("shared cache: closing connections failed", exc_info=True)

    def _succeeded(self) -> None:
        with self._lock:
            back, self._down, self._closed_at = self._down, False, None
        if back:
            logger.info("shared cache (Redis) is back: using it again")

    # -- entries ----------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> bytes | None:
        """The plain value of an entry, or None (a miss, unreadable, or Redis unavailable)."""
        redis_key = self.key(kind, key)
        try:
            sealed = self._call(lambda r: r.get(redis_key))
        except _Unavailable:
            return None
        if not isinstance(sealed, bytes):
            return None
        plain = self.open(redis_key, sealed)
        if plain is None:
            logger.warning(
                "shared cache: an unreadable %s entry was ignored (corrupt, or sealed with another key)", kind
            )
        return plain

    def put(self, kind: str, key: str, value: bytes, ttl_seconds: float) -> bool:
        """Store an entry for ``ttl_seconds``; False if it was not stored (no time left, or Redis unavailable)."""
        milliseconds = int(ttl_seconds * 1000)
        if milliseconds <= 0:
            return False
        redis_key = self.key(kind, key)
        sealed = self.seal(redis_key, value)
        try:
            self._call(lambda r: r.set(redis_key, sealed, px=milliseconds))
        except _Unavailable:
            return False
        return True

    def delete(self, kind: str, key: str) -> None:
        redis_key = self.key(kind, key)
        try:
            self._call(lambda r: r.delete(redis_key))
        except _Unavailable:
            pass

    # -- the fleet-wide lock ----------------------------------------------------------------

    def acquire(self, kind: str, key: str, ttl_seconds: float) -> str | None:
        """The lock for one cache key, for at most ``ttl_seconds``: its owner token, or None if another has it.

        Raises ``_Unavailable`` when Redis cannot be asked (the caller then goes on without the lock).
        """
        lock_key = self.key("lock", f"{kind}\n{key}")
        token = secrets.token_hex(16)
        milliseconds = max(1, int(ttl_seconds * 1000))
        taken = self._call(lambda r: r.set(lock_key, token, nx=True, px=milliseconds))
        return token if taken else None

    def release(self, kind: str, key: str, token: str) -> bool:
        """Give the lock back if we still own it (after it expired, someone else may)."""
        lock_key = self.key("lock", f"{kind}\n{key}")
        try:
            return bool(self._call(lambda r: self._release(keys=[lock_key], args=[token], client=r)))
        except _Unavailable:
            return False

    def locked(self, kind: str, key: str) -> bool:
        lock_key = self.key("lock", f"{kind}\n{key}")
        return bool(self._call(lambda r: r.exists(lock_key)))

    # -- the two-level read -----------------------------------------------------------------

    def read(self, kind: str, key: str, codec: Codec[T]) -> T | None:
        """A shared value still worth handing out, or None."""
        plain = self.get(kind, key)
        if plain is None:
            return None
        try:
            value = codec.loads(plain)
        except (ValueError, KeyError, TypeError, IndexError):
            logger.warning("shared cache: a %s entry in an unknown layout was ignored", kind)
            return None
        return value if codec.ttl(value) > 0 else None

    def fetch(
        self, kind: str, key: str, create: Callable[[], T], codec: Codec[T], remaining: Callable[[], float]
    ) -> tuple[T, Source]:
        """The shared value for ``key``, or ``create()``'s, made once for the whole fleet and shared."""
        value = self.read(kind, key, codec)
        if value is not None:
            return value, "shared"

        def create_and_share() -> T:
            made = create()
            self.put(kind, key, codec.dumps(made), codec.ttl(made))
            return made

        return self.once(kind, key, create_and_share, lambda: self.read(kind, key, codec), remaining)

    def once(
        self,
        kind: str,
        key: str,
        create: Callable[[], T],
        read: Callable[[], T | None],
        remaining: Callable[[], float],
    ) -> tuple[T, Source]:
        """``create()`` (which shares what it makes) under the fleet lock, or what another instance shared.

        ``remaining`` is the time left of the request's deadline. Whoever takes the lock creates the
        value; the others wait for it (``read``) with part of their time, then create it themselves
        (the owner may have died or be slow): a request never fails for Redis's sake.
        """
        try:
            token = self.acquire(kind, key, max(1.0, remaining()))
            if token is None:
                shared = self._wait(kind, key, read, remaining)
                if shared is not None:
                    return shared, "shared"
                token = self.acquire(kind, key, max(1.0, remaining()))
            if token is not None:
                # The previous owner may have shared it just before we asked for the lock.
                shared = read()
                if shared is not None:
                    self.release(kind, key, token)
                    return shared, "shared"
        except _Unavailable:
            token = None
        try:
            return create(), "created"
        finally:
            if token is not None:
                self.release(kind, key, token)

    def _wait(self, kind: str, key: str, read: Callable[[], T | None], remaining: Callable[[], float]) -> T | None:
        """Wait for another instance to share the value, while it holds the lock and time allows."""
        give_up_at = remaining() * WAIT_RESERVE
        while remaining() > give_up_at:
            self.clock.sleep(min(POLL_SECONDS, remaining() - give_up_at))
            value = read()
            if value is not None:
                return value
            if not self.available or not self.locked(kind, key):
                return read()  # the owner finished (or failed) just now
        return None

    # -- the doctor -------------------------------------------------------------------------

    def probe(self) -> Probe:
        """Reachable and authenticated (PING), a sealed write and read round trip; no breaker involved."""
        lines: list[tuple[bool, str]] = []
        try:
            self.client.ping()
        except Exception as exc:  # noqa: BLE001 - reported, never raised
            self._disconnect()
            if _is_credential_error(exc):
                text = (
                    "Redis refused the credentials: check the password in POWERBI_CACHE_URL or, without one, "
                    "the access policy assignment of the app's managed identity on the cache"
                )
            else:
                text = f"Redis cannot be reached: {_describe(exc)}"
            return Probe(False, ((False, text),))
        lines.append((True, "reachable and authenticated (PING)"))
        probe_key = f"doctor {secrets.token_hex(8)}"
        written = secrets.token_bytes(24)
        try:
            redis_key = self.key("doctor", probe_key)
            self.client.set(redis_key, self.seal(redis_key, written), px=10_000)
            read_back = self.client.get(redis_key)
            self.client.delete(redis_key)
        except Exception as exc:  # noqa: BLE001
            lines.append((False, f"a write and read round trip failed: {_describe(exc)}"))
            return Probe(False, tuple(lines))
        if not isinstance(read_back, bytes) or self.open(redis_key, read_back) != written:
            lines.append((False, "a value written was not read back intact"))
            return Probe(False, tuple(lines))
        lines.append((True, "a sealed write and read round trip (AES-256-GCM)"))
        return Probe(True, tuple(lines))


class RedisStore:
    """The shared cache as the second level of ``shared.cache.TieredCache`` (embed tokens, catalog listings).

    Keys arrive as ``<cache name>:<key text>``; the cache name becomes the entry's kind in Redis.
    """

    def __init__(self, cache: SharedCache) -> None:
        self.cache = cache

    @classmethod
    def create(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> RedisStore | None:
        cache = SharedCache.create(settings, clock)
        return cls(cache) if cache is not None else None

    @staticmethod
    def _kind(key: str) -> str:
        return key.split(":", 1)[0] if ":" in key else "entry"

    def get(self, key: str) -> dict[str, Any] | None:
        plain = self.cache.get(self._kind(key), key)
        if plain is None:
            return None
        try:
            value = json.loads(plain)
        except ValueError:
            return None
        return value if isinstance(value, dict) else None

    def put(self, key: str, value: dict[str, Any], ttl_seconds: float) -> None:
        data = json.dumps(value, separators=(",", ":")).encode("utf-8")
        self.cache.put(self._kind(key), key, data, ttl_seconds)

    def load_once(
        self, key: str, load: Callable[[], T], read: Callable[[], T | None], remaining: Callable[[], float]
    ) -> T:
        """One ``load`` for the whole fleet (it shares what it makes); the others ``read`` it."""
        return self.cache.once(self._kind(key), key, load, read, remaining)[0]


def connect(config: SharedCacheSettings, settings: Settings) -> redis.Redis:
    """A Redis client with short timeouts and no retries. Lazy: connects on first use.

    With a password in the URL, redis-py sends it; without one, redis-entraid signs in with the
    app's managed identity (Azure Managed Redis: ``rediss://<name>.<region>.redis.azure.net:10000``).
    """
    import redis
    from redis.backoff import NoBackoff
    from redis.retry import Retry

    options: dict[str, Any] = {}
    if config.uses_entra:
        options["credential_provider"] = _entra_credentials(settings)
    return redis.Redis.from_url(
        config.url,
        socket_timeout=config.timeout_seconds,
        socket_connect_timeout=config.timeout_seconds,
        retry=Retry(NoBackoff(), 0),  # the breaker, not retries, handles a Redis that is away
        health_check_interval=0,
        client_name="powerbi-embed",
        **options,
    )


def _entra_credentials(settings: Settings) -> Any:
    """redis-entraid's provider for the app's managed identity (user-assigned if POWERBI_MANAGED_IDENTITY_CLIENT_ID).

    Its default gives the identity endpoint 100 ms per token, which a first call on a fresh instance
    can exceed: that would read as a refusal. A second is allowed, once per connection at most (the
    token is then kept and refreshed in the background).
    """
    from redis.auth.token_manager import RetryPolicy, TokenManagerConfig
    from redis_entraid.cred_provider import create_from_managed_identity
    from redis_entraid.identity_provider import ManagedIdentityIdType, ManagedIdentityType

    config = TokenManagerConfig(0.7, 0, ENTRA_TOKEN_TIMEOUT_MS, RetryPolicy(2, 10))
    if settings.sign_in.managed_identity_client_id:
        return create_from_managed_identity(
            identity_type=ManagedIdentityType.USER_ASSIGNED,
            resource=REDIS_RESOURCE,
            id_type=ManagedIdentityIdType.CLIENT_ID,
            id_value=settings.sign_in.managed_identity_client_id,
            token_manager_config=config,
        )
    return create_from_managed_identity(
        identity_type=ManagedIdentityType.SYSTEM_ASSIGNED, resource=REDIS_RESOURCE, token_manager_config=config
    )


def _is_credential_error(exc: BaseException) -> bool:
    """Redis said no to who we are (wrong password, no Entra access), as opposed to not answering."""
    from redis.exceptions import AuthenticationError, NoPermissionError, ResponseError

    if isinstance(exc, AuthenticationError | NoPermissionError):
        return True
    if type(exc).__name__ in ("RequestTokenErr", "TokenRenewalErr", "InvalidTokenSchemaErr"):  # redis-entraid
        return True
    if type(exc).__module__.split(".")[0] == "jwt":  # the identity endpoint's token is no JWT Redis can take
        return True
    text = str(exc).upper()
    return isinstance(exc, ResponseError) and any(word in text for word in ("WRONGPASS", "NOAUTH", "NOPERM"))


def _describe(exc: BaseException) -> str:
    """A short cause for the log: the error's class and Redis's words, which hold no secret."""
    text = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
