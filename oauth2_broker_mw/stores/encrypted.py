"""``EncryptedStore``: AES-GCM encryption at rest around any ``TokenStore``.

Owns: ``KeyRing`` (key ids → AES keys, one of them current), the envelope format, the
associated data that binds a ciphertext to its store key, and re-encryption under the
current key. Every operation is written once as a generator of :class:`StoreCall` commands
for the inner store, driven through its sync methods or its ``a``-prefixed async twins.

What is encrypted, and how it is stored (the inner store needs no change):

* A token record keeps every public field (key, type, expiry, scopes, grant, metadata, ...)
  readable, so ``list_keys`` works without decrypting. Its secrets (access, refresh and ID
  token, ``TokenRecord.secrets_dict()`` as JSON) are sealed into one envelope, stored in the
  ``access_token`` slot; ``id_token`` is stored as ``None`` and ``refresh_token`` as ``None``
  or the constant ``o2bm-enc:sealed`` (so the inner store's refresh index knows which records
  hold a refresh token; the token itself is in the envelope).
* A pending authorization keeps ``state`` (the inner store indexes it by its hash; it is
  single-use and worthless without the verifier) and seals ``code_verifier`` and ``nonce``
  into one envelope in the ``code_verifier`` slot.
* Envelope: ``o2bm-enc:1:<key id>:<base64url(nonce ‖ ciphertext ‖ tag)>``; a fresh random
  96-bit nonce per write; associated data ``o2bm-enc:1|tok|<key id>|<StoreKey.id>`` (pending:
  ``...|pend|<key id>|<state_key>``). A ciphertext copied into another key's slot (another
  tenant, principal, provider or scope set), or sealed with an unknown key, or altered, fails
  to open: the read raises :class:`~oauth2_broker_mw.CorruptRecord`, which the broker treats
  as absent (fail closed; re-authorization is required).

Public fields are not integrity-protected (only the secrets and their binding to the key).

Must not import: store drivers, httpx/httpx2, the broker. ``cryptography`` is imported only
when a ``KeyRing`` is built.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import re
import threading
from collections.abc import Awaitable
from collections.abc import Callable
from collections.abc import Iterable
from collections.abc import Mapping
from collections.abc import Sequence
from dataclasses import dataclass
from dataclasses import field
from dataclasses import replace
from typing import Any
from typing import Final
from typing import TypeVar

import cachetools

from .._core.errors import ConfigurationError
from .._core.errors import CorruptRecord
from .._core.model import PendingAuthorization
from .._core.model import PrincipalId
from .._core.model import ProviderId
from .._core.model import ScopeSet
from .._core.model import Secret
from .._core.model import StoreKey
from .._core.model import TenantId
from .._core.model import TokenRecord
from ._commands import CommandStore
from ._commands import Op
from ._commands import adrive
from ._commands import drive
from .base import SEALED_REFRESH_TOKEN
from .base import DueRecord
from .base import TokenStore
from .base import acheck_store
from .base import check_store

__all__ = [
    "TENANT_KEYS_TENANT",
    "EncryptedStore",
    "KeyRing",
    "ReencryptReport",
    "TenantKeyDeleted",
]

T = TypeVar("T")

_MAGIC: Final = "o2bm-enc:1:"
_KEY_ID_RE: Final = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")

#: Where ``EncryptedStore(tenant_keys=True)`` keeps each tenant's wrapped data key: one record
#: per tenant, its scope fingerprint the SHA-256 of the tenant id (no tenant id in the key).
TENANT_KEYS_TENANT: Final = TenantId("@tenant-keys")
_DEK: Final = "@dek"


class TenantKeyDeleted(CorruptRecord):
    """The record's tenant data key was deleted (crypto-shredded): it can never be read again.
    A :class:`~oauth2_broker_mw.CorruptRecord`, so the broker treats the record as absent."""


def _dek_key(tenant: str) -> StoreKey:
    digest = hashlib.sha256(tenant.encode("utf-8")).hexdigest()
    return StoreKey(TENANT_KEYS_TENANT, PrincipalId(_DEK), ProviderId(_DEK), digest)


def _dek_id(tenant: str) -> str:
    """The key id written next to a ciphertext sealed with ``tenant``'s data key."""
    return "tenant." + hashlib.sha256(tenant.encode("utf-8")).hexdigest()[:24]


_NONCE_LEN: Final = 12


def _aesgcm_class() -> Any:
    try:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM
    except ImportError as exc:  # pragma: no cover - cryptography comes with authlib
        raise ImportError(
            "EncryptedStore needs cryptography: pip install 'oauth2-broker-mw[crypto]'"
        ) from exc
    return AESGCM


class KeyRing:
    """AES keys by key id, one of them current. Encrypt with the current, decrypt with any.

    Keys are 16, 24 or 32 raw bytes (AES-128/192/256); 32 recommended. Keep them outside
    the data store (environment, secret manager, KMS-decrypted at start). Key ids are short
    names (``[A-Za-z0-9_.-]``, ≤ 64) written next to each ciphertext, e.g. ``"2026-11"``.
    The repr shows key ids only.
    """

    __slots__ = ("_ciphers", "_current")

    def __init__(self, keys: Mapping[str, bytes], current: str) -> None:
        aesgcm = _aesgcm_class()
        ciphers: dict[str, Any] = {}
        for key_id, key in keys.items():
            if not isinstance(key_id, str) or not _KEY_ID_RE.match(key_id):
                raise ConfigurationError(
                    f"encryption key ids must match [A-Za-z0-9_.-]{{1,64}}: {str(key_id)[:40]!r}"
                )
            if not isinstance(key, bytes | bytearray) or len(key) not in (16, 24, 32):
                raise ConfigurationError(
                    f"encryption key {key_id!r} must be 16, 24 or 32 bytes (AES); "
                    "decode base64 keys with KeyRing.from_base64"
                )
            ciphers[key_id] = aesgcm(bytes(key))
        if current not in ciphers:
            raise ConfigurationError(f"current key id {current!r} is not among the keys")
        self._ciphers = ciphers
        self._current = current

    @classmethod
    def from_base64(cls, keys: Mapping[str, str], current: str) -> KeyRing:
        """Keys given as base64 (standard or URL-safe) text, as kept in env vars or vaults."""
        raw: dict[str, bytes] = {}
        for key_id, text in keys.items():
            try:
                raw[key_id] = base64.urlsafe_b64decode(
                    text.strip().replace("+", "-").replace("/", "_") + "=" * (-len(text) % 4)
                )
            except (binascii.Error, ValueError):
                raise ConfigurationError(f"encryption key {key_id!r} is not base64") from None
        return cls(raw, current)

    @staticmethod
    def generate_key() -> bytes:
        """A fresh random 256-bit key."""
        return os.urandom(32)

    @property
    def current(self) -> str:
        return self._current

    @property
    def key_ids(self) -> frozenset[str]:
        return frozenset(self._ciphers)

    def __repr__(self) -> str:
        return f"KeyRing(key_ids={sorted(self._ciphers)!r}, current={self._current!r})"

    def seal(self, plaintext: bytes, aad_for: Callable[[str], bytes]) -> str:
        nonce = os.urandom(_NONCE_LEN)
        sealed = self._ciphers[self._current].encrypt(nonce, plaintext, aad_for(self._current))
        body = base64.urlsafe_b64encode(nonce + sealed).rstrip(b"=").decode("ascii")
        return f"{_MAGIC}{self._current}:{body}"

    def open(self, envelope: str, aad_for: Callable[[str], bytes]) -> bytes:
        """Decrypt ``envelope``; any failure is a :class:`CorruptRecord` (no details leak)."""
        key_id = envelope_key_id(envelope)
        if key_id is None:
            raise CorruptRecord("stored secret is not an encryption envelope")
        cipher = self._ciphers.get(key_id)
        if cipher is None:
            raise CorruptRecord(f"stored secret is sealed with unknown key id {key_id!r}")
        body = envelope[len(_MAGIC) + len(key_id) + 1 :]
        try:
            blob = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4))
        except (binascii.Error, ValueError):
            raise CorruptRecord("stored envelope is not base64") from None
        if len(blob) < _NONCE_LEN + 16:
            raise CorruptRecord("stored envelope is truncated")
        try:
            plaintext: bytes = cipher.decrypt(blob[:_NONCE_LEN], blob[_NONCE_LEN:], aad_for(key_id))
        except Exception:  # cryptography's InvalidTag: wrong key, wrong slot or tampered
            raise CorruptRecord(
                "stored secret cannot be decrypted (tampered, or copied from another key)"
            ) from None
        return plaintext


def envelope_key_id(value: str) -> str | None:
    """The key id of an envelope, or ``None`` if ``value`` is not one."""
    if not value.startswith(_MAGIC):
        return None
    key_id, sep, _ = value[len(_MAGIC) :].partition(":")
    return key_id if sep and _KEY_ID_RE.match(key_id) else None


def _token_aad(key: StoreKey) -> Callable[[str], bytes]:
    return lambda key_id: f"o2bm-enc:1|tok|{key_id}|{key.id}".encode()


def _pending_aad(state_key: str) -> Callable[[str], bytes]:
    return lambda key_id: f"o2bm-enc:1|pend|{key_id}|{state_key}".encode()


S = TypeVar("S")


def _unsealed(
    ring: KeyRing,
    envelope: str,
    aad_for: Callable[[str], bytes],
    what: str,
    stored: S,
    restore: Callable[[S, Any], S],
) -> S:
    """``stored`` with the secrets sealed in ``envelope`` put back by ``restore``; anything
    but the expected JSON object is :class:`CorruptRecord` (the ring's own errors pass)."""
    try:
        return restore(stored, json.loads(ring.open(envelope, aad_for)))
    except CorruptRecord:
        raise
    except (ValueError, TypeError, KeyError):
        raise CorruptRecord(f"decrypted {what} secrets are malformed") from None


def _with_token_secrets(stored: TokenRecord, secrets: Any) -> TokenRecord:
    access = secrets["access_token"]
    if not isinstance(access, str) or not access:
        raise ValueError("no access token")
    refresh, id_token = secrets.get("refresh_token"), secrets.get("id_token")
    return replace(
        stored,
        access_token=Secret(access),
        refresh_token=None if refresh is None else Secret(refresh),
        id_token=None if id_token is None else Secret(id_token),
    )


def _with_pending_secrets(stored: PendingAuthorization, secrets: Any) -> PendingAuthorization:
    verifier, nonce = secrets["code_verifier"], secrets["nonce"]
    return replace(
        stored,
        code_verifier=None if verifier is None else Secret(verifier),
        nonce=None if nonce is None else Secret(nonce),
    )


@dataclass(frozen=True, slots=True)
class StoreCall:
    """One call on the inner store: ``method`` (sync name; the async runner adds ``a``)."""

    method: str
    args: tuple[Any, ...] = ()
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class ReencryptReport:
    """What :meth:`EncryptedStore.reencrypt_all` did."""

    reencrypted: int = 0
    already_current: int = 0
    unreadable: tuple[StoreKey, ...] = ()


class EncryptedStore(CommandStore):
    """Wrap ``inner`` so tokens and login secrets are stored AES-GCM encrypted.

    ::

        ring = KeyRing.from_base64({"2026-11": os.environ["BROKER_KEY_2026_11"]}, "2026-11")
        store = EncryptedStore(RedisStore("redis://cache/0"), ring)

    ``keys`` is a :class:`KeyRing`, or a mapping of key id → raw key with ``current_key_id``.
    Rotation: add a new key and make it current (old ones stay for reading), then run
    :meth:`reencrypt_all`; when it reports nothing unreadable, drop the old key.
    ``allow_plaintext=True`` reads records written before encryption was enabled (migration
    only: such records are not bound to their slot); :meth:`reencrypt_all` seals them.
    Closing this store closes ``inner``.

    ``tenant_keys=True`` (SECURITY J9): each tenant's records are sealed with a data key of
    its own, made on the tenant's first write and kept in the inner store wrapped (sealed) by
    the key ring. :meth:`delete_tenant_key` deletes it: that tenant's rows can never be
    decrypted again (crypto-shredding; a read raises :class:`TenantKeyDeleted`, which the
    broker treats as absent), other tenants are untouched. A data key is cached in process for
    ``tenant_key_ttl`` seconds: other processes stop reading a shredded tenant within that.
    Records written before ``tenant_keys`` was enabled stay readable under the key ring.
    """

    def __init__(
        self,
        inner: TokenStore,
        keys: KeyRing | Mapping[str, bytes],
        current_key_id: str | None = None,
        *,
        allow_plaintext: bool = False,
        tenant_keys: bool = False,
        tenant_key_ttl: float = 30.0,
    ) -> None:
        if isinstance(keys, KeyRing):
            if current_key_id is not None and current_key_id != keys.current:
                raise ConfigurationError("current_key_id disagrees with the KeyRing's current")
            ring = keys
        else:
            if current_key_id is None:
                raise ConfigurationError("pass current_key_id with a mapping of keys")
            ring = KeyRing(keys, current_key_id)
        self._inner = inner
        self._ring = ring
        self._allow_plaintext = allow_plaintext
        self._tenant_keys = tenant_keys
        self._deks: cachetools.TTLCache[str, KeyRing] = cachetools.TTLCache(4096, tenant_key_ttl)
        self._deks_lock = threading.Lock()

    def __repr__(self) -> str:
        return f"EncryptedStore({self._inner!r}, {self._ring!r})"

    @property
    def inner(self) -> TokenStore:
        """The wrapped store, which holds the sealed records (closed with this one)."""
        return self._inner

    @property
    def keyring(self) -> KeyRing:
        """The key ring records are sealed with (its current key) and opened with (any key)."""
        return self._ring

    # -- drivers ----------------------------------------------------------------------------
    def _run(self, op: Op[T]) -> T:
        def execute(call: StoreCall) -> Any:
            return self._method(call.method)(*call.args, **call.kwargs)

        return drive(op, execute)

    async def _arun(self, op: Op[T]) -> T:
        async def execute(call: StoreCall) -> Any:
            method: Callable[..., Awaitable[Any]] = self._method("a" + call.method)
            return await method(*call.args, **call.kwargs)

        return await adrive(op, execute)

    def _method(self, name: str) -> Callable[..., Any]:
        method: Callable[..., Any] | None = getattr(self._inner, name, None)
        if method is None:
            raise ConfigurationError(
                f"the inner store {type(self._inner).__name__} has no {name}(): "
                "pass tenants= to reencrypt_all"
            )
        return method

    def close(self) -> None:
        self._inner.close()

    async def aclose(self) -> None:
        await self._inner.aclose()

    def check(self) -> None:
        check_store(self._inner)

    async def acheck(self) -> None:
        await acheck_store(self._inner)

    # -- sealing ----------------------------------------------------------------------------
    def seal_record(self, record: TokenRecord, ring: KeyRing | None = None) -> TokenRecord:
        """``record`` as it is stored: public fields as they are, secrets in an envelope."""
        plaintext = json.dumps(record.secrets_dict(), separators=(",", ":")).encode()
        envelope = (ring or self._ring).seal(plaintext, _token_aad(record.key))
        # The refresh-token slot says only "there is one" (a constant, not a secret), so the
        # inner store's refresh index sees which records can be refreshed.
        marker = None if record.refresh_token is None else Secret(SEALED_REFRESH_TOKEN)
        return replace(record, access_token=Secret(envelope), refresh_token=marker, id_token=None)

    def open_record(self, stored: TokenRecord, ring: KeyRing | None = None) -> TokenRecord:
        """Inverse of :meth:`seal_record`; :class:`CorruptRecord` if it cannot be opened.

        ``ring``: the tenant's data key (``tenant_keys``); ``None`` when it was deleted.
        """
        envelope = stored.access_token.get_secret_value()
        kid = envelope_key_id(envelope)
        opener = self._ring
        if kid is not None and kid not in self._ring.key_ids and kid == _dek_id(stored.key.tenant):
            if not self._tenant_keys:
                raise CorruptRecord("sealed with a tenant data key: open with tenant_keys=True")
            if ring is None:
                raise TenantKeyDeleted("the tenant's data key was deleted: the record is shredded")
            opener = ring
        if kid is None:
            if self._allow_plaintext:
                return stored
            raise CorruptRecord("stored token record is not encrypted")
        sealed_refresh = stored.refresh_token
        if (
            sealed_refresh is not None and sealed_refresh.get_secret_value() != SEALED_REFRESH_TOKEN
        ) or stored.id_token is not None:
            raise CorruptRecord("encrypted token record carries plaintext secrets")
        aad = _token_aad(stored.key)
        return _unsealed(opener, envelope, aad, "token", stored, _with_token_secrets)

    def _seal_pending(self, pending: PendingAuthorization) -> PendingAuthorization:
        secrets = {
            "code_verifier": None
            if pending.code_verifier is None
            else pending.code_verifier.get_secret_value(),
            "nonce": None if pending.nonce is None else pending.nonce.get_secret_value(),
        }
        plaintext = json.dumps(secrets, separators=(",", ":")).encode()
        envelope = self._ring.seal(plaintext, _pending_aad(pending.state_key))
        return replace(pending, code_verifier=Secret(envelope), nonce=None)

    def _open_pending(self, stored: PendingAuthorization) -> PendingAuthorization:
        envelope = "" if stored.code_verifier is None else stored.code_verifier.get_secret_value()
        if envelope_key_id(envelope) is None:
            if self._allow_plaintext:
                return stored
            raise CorruptRecord("stored pending authorization is not encrypted")
        aad = _pending_aad(stored.state_key)
        return _unsealed(self._ring, envelope, aad, "pending", stored, _with_pending_secrets)

    # -- operations (one source for sync and async) -----------------------------------------
    # -- per-tenant data keys (tenant_keys=True) ---------------------------------------------
    def _op_tenant_ring(self, tenant: str, *, create: bool) -> Op[KeyRing | None]:
        """The tenant's data key as a one-key ring: cached, else read (and unwrapped), else
        made and stored (``create``); ``None`` without one."""
        if not self._tenant_keys or tenant == TENANT_KEYS_TENANT:
            return None
        with self._deks_lock:
            cached = self._deks.get(tenant)
        if cached is not None:
            return cached
        key = _dek_key(tenant)
        stored: TokenRecord | None = yield StoreCall("get", (key,))
        if stored is None and create:
            wrapped = self._ring.seal(KeyRing.generate_key(), _token_aad(key))
            record = TokenRecord(
                key=key,
                access_token=Secret(wrapped),
                refresh_token=None,
                issued_at=0.0,
                expires_at=None,
                scopes=ScopeSet(()),
                requested_scopes=ScopeSet(()),
            )
            won = yield StoreCall("compare_and_swap", (record,), {"expected_version": None})
            stored = record if won is not None else (yield StoreCall("get", (key,)))
        if stored is None:
            return None
        raw = self._ring.open(stored.access_token.get_secret_value(), _token_aad(key))
        ring = KeyRing({_dek_id(tenant): raw}, _dek_id(tenant))
        with self._deks_lock:
            self._deks[tenant] = ring
        return ring

    def _op_delete_tenant_key(self, tenant: str) -> Op[bool]:
        with self._deks_lock:
            self._deks.pop(tenant, None)
        removed: bool = yield StoreCall("delete", (_dek_key(TenantId(tenant)),))
        with self._deks_lock:
            self._deks.pop(tenant, None)
        return removed

    def delete_tenant_key(self, tenant: str) -> bool:
        """Crypto-shred ``tenant``: delete its data key, so none of its stored records can be
        decrypted again (reads raise :class:`TenantKeyDeleted`). Returns whether one existed.
        Other processes stop reading it within ``tenant_key_ttl``."""
        return self._run(self._op_delete_tenant_key(tenant))

    async def adelete_tenant_key(self, tenant: str) -> bool:
        """Async :meth:`delete_tenant_key`."""
        return await self._arun(self._op_delete_tenant_key(tenant))

    def _op_get(self, key: StoreKey) -> Op[TokenRecord | None]:
        stored = yield StoreCall("get", (key,))
        if stored is None:
            return None
        ring = yield from self._op_tenant_ring(key.tenant, create=False)
        return self.open_record(stored, ring)

    def _op_write(
        self, record: TokenRecord, expected_version: int | None, *, unconditional: bool
    ) -> Op[TokenRecord | None]:
        ring = yield from self._op_tenant_ring(record.key.tenant, create=True)
        sealed = self.seal_record(record, ring)
        if unconditional:
            stored = yield StoreCall("put", (sealed,))
        else:
            stored = yield StoreCall(
                "compare_and_swap", (sealed,), {"expected_version": expected_version}
            )
        return None if stored is None else record.with_version(stored.version)

    def _op_delete(self, key: StoreKey, expected_version: int | None) -> Op[bool]:
        removed: bool = yield StoreCall("delete", (key,), {"expected_version": expected_version})
        return removed

    def _op_delete_keys(self, keys: Sequence[StoreKey]) -> Op[int]:
        if not hasattr(self._inner, "delete_keys"):  # a store without bulk deletion
            return (yield from super()._op_delete_keys(keys))
        removed: int = yield StoreCall("delete_keys", (keys,))
        return removed

    def _op_delete_pending(self, tenant: TenantId) -> Op[int]:
        removed: int = yield StoreCall("delete_pending", (tenant,))
        return removed

    def _op_list_keys(self, tenant: TenantId, principal: str | None) -> Op[list[StoreKey]]:
        keys: list[StoreKey] = yield StoreCall("list_keys", (tenant, principal))
        return keys

    def _op_list_tenants(self) -> Op[list[TenantId]]:
        tenants: list[TenantId] = yield StoreCall("list_tenants")
        return tenants

    def _op_expiring(self, before: float, limit: int) -> Op[list[DueRecord]]:
        due: list[DueRecord] = yield StoreCall("expiring", (before,), {"limit": limit})
        return due

    def _op_idle(self, provider: str, issued_before: float, limit: int) -> Op[list[DueRecord]]:
        due: list[DueRecord] = yield StoreCall("idle", (provider, issued_before), {"limit": limit})
        return due

    def _op_acquire_lock(self, name: str, owner: str, ttl: float) -> Op[bool]:
        got: bool = yield StoreCall("acquire_lock", (name, owner, ttl))
        return got

    def _op_renew_lock(self, name: str, owner: str, ttl: float) -> Op[bool]:
        got: bool = yield StoreCall("renew_lock", (name, owner, ttl))
        return got

    def _op_release_lock(self, name: str, owner: str) -> Op[bool]:
        got: bool = yield StoreCall("release_lock", (name, owner))
        return got

    def _op_backoff_until(self, name: str) -> Op[float]:
        until: float = yield StoreCall("backoff_until", (name,))
        return until

    def _op_set_backoff(self, name: str, until: float, now: float) -> Op[float]:
        stored: float = yield StoreCall("set_backoff", (name, until), {"now": now})
        return stored

    def _op_take_token(
        self, name: str, now: float, interval: float, burst: int, max_wait: float
    ) -> Op[tuple[bool, float]]:
        taken: tuple[bool, float] = yield StoreCall(
            "take_token",
            (name,),
            {"now": now, "interval": interval, "burst": burst, "max_wait": max_wait},
        )
        return taken

    def _op_count_calls(self, name: str, now: float, window: float) -> Op[int]:
        counted: int = yield StoreCall("count_calls", (name,), {"now": now, "window": window})
        return counted

    def _op_put_pending(self, pending: PendingAuthorization) -> Op[None]:
        yield StoreCall("put_pending", (self._seal_pending(pending),))
        return None

    def _op_take_pending(self, state_key: str) -> Op[PendingAuthorization | None]:
        stored = yield StoreCall("take_pending", (state_key,))
        return None if stored is None else self._open_pending(stored)

    def _op_reencrypt_all(self, tenants: Iterable[str] | None) -> Op[ReencryptReport]:
        if tenants is None:
            tenants = yield StoreCall("list_tenants")
        current = self._ring.current
        reencrypted = already = 0
        unreadable: list[StoreKey] = []
        for tenant in tenants:
            keys: list[StoreKey] = yield StoreCall("list_keys", (TenantId(tenant), None))
            for key in keys:
                while True:  # a concurrent writer may win the CAS: read again and retry
                    try:
                        stored = yield StoreCall("get", (key,))
                    except CorruptRecord:
                        unreadable.append(key)
                        break
                    if stored is None:
                        break
                    kid = envelope_key_id(stored.access_token.get_secret_value())
                    if kid == current or kid == _dek_id(key.tenant):
                        already += 1  # a tenant's rows: its data key is re-wrapped instead
                        break
                    try:
                        if key.tenant == TENANT_KEYS_TENANT:  # a data key: re-wrap it
                            raw = self._ring.open(
                                stored.access_token.get_secret_value(), _token_aad(key)
                            )
                            wrapped = Secret(self._ring.seal(raw, _token_aad(key)))
                            sealed = replace(stored, access_token=wrapped)
                        else:
                            sealed = self.seal_record(self.open_record(stored))
                    except CorruptRecord:
                        unreadable.append(key)
                        break
                    swapped = yield StoreCall(
                        "compare_and_swap", (sealed,), {"expected_version": stored.version}
                    )
                    if swapped is not None:
                        reencrypted += 1
                        break
        return ReencryptReport(reencrypted, already, tuple(unreadable))

    def reencrypt_all(self, tenants: Iterable[str] | None = None) -> ReencryptReport:
        """Seal every record under the current key (and plaintext ones, if allowed).

        ``tenants`` defaults to the inner store's ``list_tenants()`` (Redis, PostgreSQL).
        Safe while the broker runs: each record is rewritten by compare-and-swap. Records
        that cannot be opened with any known key are left alone and listed as unreadable.
        """
        return self._run(self._op_reencrypt_all(tenants))

    async def areencrypt_all(self, tenants: Iterable[str] | None = None) -> ReencryptReport:
        return await self._arun(self._op_reencrypt_all(tenants))
