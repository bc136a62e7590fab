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

Concurrent cold requests on different instances make one upstream call: ``once`` takes
a short fleet-wide lock (``SET NX PX``; released only by its owner, through a
compare-and-delete script; expiring by itself if the owner dies), and the others wait
within their deadline for the entry, then read it.

Entra ID tokens are never put here: each process keeps them in MSAL's cache (see docs/architecture.md).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import os
import secrets
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import unquote, urlsplit

from shared import telemetry
from shared.cache import Source
from shared.clock import SYSTEM_CLOCK, Clock
from shared.redact import register_secret
from shared.settings import Settings, SharedCacheSettings

if TYPE_CHECKING:
    import redis

logger = logging.getLogger(__name__)

T = TypeVar("T")

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


class Seal:
    """Key names that show nothing, and values sealed with AES-256-GCM bound to their key name."""

    def __init__(self, encryption_key: bytes, namespace: str) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        self._aead = AESGCM(encryption_key)
        # Key names are HMACs under a key of their own, derived from the encryption key, so that a
        # dump cannot be searched for a guessed user name's hash.
        self._names = hmac.new(encryption_key, b"powerbi-embed shared cache key names", hashlib.sha256).digest()
        self.prefix = f"pbi:{self._digest(namespace)[:32]}:"

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


class Breaker:
    """Redis calls behind a circuit breaker: after a failure Redis is left alone for ``seconds``, with one
    log line when it goes away (a configuration warning when it refuses our credentials), one when back."""

    def __init__(self, client: redis.Redis, clock: Clock, seconds: float) -> None:
        self.client = client
        self.clock = clock
        self.seconds = seconds
        self._lock = threading.Lock()
        self._closed_at: float | None = None  # monotonic time until which Redis is left alone
        self._down = False
        self._warned_credentials = False
        # Where Redis is, for telemetry: its host and port, never the URL (it may hold a password).
        where = client.connection_pool.connection_kwargs
        self._telemetry: dict[str, telemetry.AttributeValue] = {"db.system.name": "redis"}
        if where.get("host"):
            self._telemetry |= {"server.address": str(where["host"]), "server.port": int(where.get("port", 6379))}

    @property
    def available(self) -> bool:
        """False while the breaker is open (Redis failed less than ``seconds`` ago)."""
        with self._lock:
            return self._closed_at is None or self.clock.monotonic() >= self._closed_at

    def call(self, command: str, operation: Callable[[redis.Redis], T]) -> T:
        """``operation``'s result, or ``_Unavailable`` when Redis is not to be used or just failed; timed
        for telemetry as one Redis ``command`` (``GET``, ``SET``...)."""
        if not self.available:
            raise _Unavailable
        try:
            attributes = {**self._telemetry, "db.operation.name": command}
            with telemetry.upstream("redis", command, f"redis {command}", attributes) as call:
                result = operation(self.client)
                call.status("ok")
        except Exception as exc:  # whatever Redis does, the request goes on without it
            self._failed(exc)
            raise _Unavailable from exc
        self._succeeded()
        return result

    def _failed(self, exc: BaseException) -> None:
        self.disconnect()
        credentials = _is_credential_error(exc)
        with self._lock:
            self._closed_at = self.clock.monotonic() + self.seconds
            first, self._down = not self._down, True
            warn_credentials = credentials and not self._warned_credentials
            self._warned_credentials = self._warned_credentials or credentials
        if warn_credentials:
            logger.warning(
                "configuration: the shared cache (Redis) refused the function's credentials (%s): check the "
                "password in POWERBI_CACHE_URL or, without one, the access policy assignment of the app's "
                "managed identity on the cache; serving without the shared cache, trying again every %.0f s",
                type(exc).__name__,
                self.seconds,
            )
        elif first:
            logger.warning(
                "shared cache (Redis) unavailable (%s): serving from the in-process cache and Power BI; "
                "trying again after %.0f s",
                _describe(exc),
                self.seconds,
            )

    def disconnect(self) -> None:
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


class SharedCache:
    """The shared level of ``shared.cache.Cache``: sealed entries and fleet-wide locks on one Redis,
    behind a circuit breaker."""

    def __init__(self, client: redis.Redis, seal: Seal, clock: Clock = SYSTEM_CLOCK, *, breaker_seconds: float) -> None:
        self.client = client
        self.clock = clock
        self.seal = seal
        self.breaker = Breaker(client, clock, breaker_seconds)
        self._release: Any = client.register_script(_RELEASE)

    @classmethod
    def create(cls, settings: Settings, clock: Clock = SYSTEM_CLOCK) -> SharedCache | None:
        """The shared cache the settings describe, or None without POWERBI_CACHE_URL. Makes no network call."""
        config = settings.shared_cache
        if config is None:
            return None
        register_cache_secrets(config)
        seal = Seal(config.encryption_key, namespace_material(settings))
        return cls(connect(config, settings), seal, clock, breaker_seconds=config.breaker_seconds)

    # -- entries ----------------------------------------------------------------------------

    def get(self, kind: str, key: str) -> bytes | None:
        """The plain value of an entry, or None (a miss, unreadable, or Redis unavailable)."""
        redis_key = self.seal.key(kind, key)
        try:
            sealed = self.breaker.call("GET", lambda r: r.get(redis_key))
        except _Unavailable:
            return None
        if not isinstance(sealed, bytes):
            return None
        plain = self.seal.open(redis_key, sealed)
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
        redis_key = self.seal.key(kind, key)
        sealed = self.seal.seal(redis_key, value)
        try:
            self.breaker.call("SET", lambda r: r.set(redis_key, sealed, px=milliseconds))
        except _Unavailable:
            return False
        return True

    # -- the fleet-wide lock ----------------------------------------------------------------

    def acquire(self, kind: str, key: str, ttl_seconds: float) -> str | None:
        """The lock for one cache key, for at most ``ttl_seconds``: its owner token, or None if another has it.

        Raises ``_Unavailable`` when Redis cannot be asked (the caller then goes on without the lock).
        """
        lock_key = self.seal.key("lock", f"{kind}\n{key}")
        token = secrets.token_hex(16)
        milliseconds = max(1, int(ttl_seconds * 1000))
        taken = self.breaker.call("SET", lambda r: r.set(lock_key, token, nx=True, px=milliseconds))
        return token if taken else None

    def release(self, kind: str, key: str, token: str) -> bool:
        """Give the lock back if we still own it (after it expired, someone else may)."""
        lock_key = self.seal.key("lock", f"{kind}\n{key}")
        try:
            return bool(self.breaker.call("EVALSHA", lambda r: self._release(keys=[lock_key], args=[token], client=r)))
        except _Unavailable:
            return False

    def locked(self, kind: str, key: str) -> bool:
        lock_key = self.seal.key("lock", f"{kind}\n{key}")
        return bool(self.breaker.call("EXISTS", lambda r: r.exists(lock_key)))

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
            if not self.breaker.available or not self.locked(kind, key):
                return read()  # the owner finished (or failed) just now
        return None


def probe(cache: SharedCache) -> Probe:
    """For the doctor: reachable and authenticated (PING), a sealed write and read round trip; no breaker."""
    try:
        cache.client.ping()
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        cache.breaker.disconnect()
        if _is_credential_error(exc):
            text = (
                "Redis refused the credentials: check the password in POWERBI_CACHE_URL or, without one, "
                "the access policy assignment of the app's managed identity on the cache"
            )
        else:
            text = f"Redis cannot be reached: {_describe(exc)}"
        return Probe(False, ((False, text),))
    lines: list[tuple[bool, str]] = [(True, "reachable and authenticated (PING)")]
    written = secrets.token_bytes(24)
    redis_key = cache.seal.key("doctor", f"doctor {secrets.token_hex(8)}")
    try:
        cache.client.set(redis_key, cache.seal.seal(redis_key, written), px=10_000)
        read_back = cache.client.get(redis_key)
        cache.client.delete(redis_key)
    except Exception as exc:  # noqa: BLE001
        lines.append((False, f"a write and read round trip failed: {_describe(exc)}"))
        return Probe(False, tuple(lines))
    if not isinstance(read_back, bytes) or cache.seal.open(redis_key, read_back) != written:
        lines.append((False, "a value written was not read back intact"))
        return Probe(False, tuple(lines))
    lines.append((True, "a sealed write and read round trip (AES-256-GCM)"))
    return Probe(True, tuple(lines))


def register_cache_secrets(config: SharedCacheSettings) -> None:
    """The Redis password (as written in POWERBI_CACHE_URL and decoded) and the encryption key (as the setting
    spells it, base64) are secrets for the logs: a redis-py error or a stray repr must not show them."""
    password = urlsplit(config.url).password
    for secret in (password, unquote(password or ""), base64.b64encode(config.encryption_key).decode("ascii")):
        register_secret(secret, lasting=True)


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
