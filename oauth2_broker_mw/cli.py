"""The admin commands of ``oauth2-broker``: look at and repair a token store from a shell.

Owns: the ``connections``, ``refresh``, ``revoke``, ``forget-principal``, ``offboard-tenant``,
``keys``, ``migrate``, ``providers`` and ``refresher`` commands (argparse), their ``--json``
output and the stderr progress bar. Stores are named by URL (:func:`~oauth2_broker_mw.stores.
open_store`); an encryption key ring comes from a JSON file (``--keys``); a client secret only
ever from the environment (``OAUTH2_BROKER_CLIENT_SECRET``), never from the command line. No
command prints a token: records are shown by their public fields.

Exit codes: 0 done, 1 done with problems (mismatches, failures), 2 bad usage or configuration.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import sys
import tempfile
import time
from collections.abc import Callable
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any
from typing import TextIO

from ._core.errors import BrokerError
from ._core.errors import ConfigurationError
from ._core.errors import CorruptRecord
from ._core.events import RevocationQueued
from ._core.model import JSONValue
from ._core.model import StoreKey
from ._core.model import TenantId
from ._core.model import TokenRecord
from ._core.provider import ProviderDescriptor
from .stores import open_store
from .stores.base import RefreshIndex
from .stores.base import TokenStore
from .stores.base import bulk_deletion

__all__ = ["add_commands"]

CLIENT_SECRET_ENV = "OAUTH2_BROKER_CLIENT_SECRET"
_ENDPOINTS = (
    "issuer",
    "authorization_endpoint",
    "token_endpoint",
    "revocation_endpoint",
    "introspection_endpoint",
    "userinfo_endpoint",
    "jwks_uri",
    "pushed_authorization_request_endpoint",
)


class CommandError(ConfigurationError):
    """A command cannot run as asked (exit code 2); the message says what to change."""


# -- output ------------------------------------------------------------------------------------
class Progress:
    """A one-line progress bar on stderr (only when stderr is a terminal, or forced)."""

    def __init__(self, total: int, label: str, enabled: bool, out: TextIO | None = None) -> None:
        self.total, self.label, self.enabled = total, label, enabled and total > 0
        self.out = out or sys.stderr
        self.done = 0
        self._last = 0.0

    def step(self, n: int = 1) -> None:
        self.done += n
        now = time.monotonic()
        if self.enabled and (now - self._last > 0.1 or self.done >= self.total):
            self._last = now
            width = 30
            filled = int(width * self.done / self.total)
            bar = "#" * filled + "." * (width - filled)
            self.out.write(f"\r{self.label} [{bar}] {self.done}/{self.total}")
            if self.done >= self.total:
                self.out.write("\n")
            self.out.flush()


def _emit(args: argparse.Namespace, data: Any, lines: Sequence[str]) -> None:
    if args.json:
        print(json.dumps(data, indent=2, sort_keys=True))
    else:
        for line in lines:
            print(line)


def record_summary(record: TokenRecord, now: float) -> dict[str, Any]:
    """What ``connections`` shows of a record: public fields only, never a token."""
    return {
        "tenant": record.key.tenant,
        "principal": record.key.principal,
        "provider": record.key.provider,
        "scope_fingerprint": record.key.scope_fingerprint,
        "scopes": list(record.scopes.scopes),
        "status": record.status(now).value,
        "grant": record.grant,
        "token_type": record.token_type,
        "has_refresh_token": record.refresh_token is not None,
        "issued_at": record.issued_at,
        "expires_at": record.expires_at,
        "refresh_token_expires_at": record.refresh_token_expires_at,
        "revoked_at": record.revoked_at,
        "version": record.version,
        "metadata_keys": sorted(record.metadata),
    }


# -- configuration -----------------------------------------------------------------------------
def _keyring(path: str | None) -> Any:
    if not path:
        return None
    from .stores.encrypted import KeyRing

    data = _read_keys(path)
    return KeyRing.from_base64(data["keys"], data["current"])


def _read_keys(path: str) -> dict[str, Any]:
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CommandError(f"cannot read the key file {path!r}: {type(exc).__name__}") from None
    if (
        not isinstance(data, dict)
        or not isinstance(data.get("keys"), dict)
        or data.get("current") not in data["keys"]
    ):
        raise CommandError(
            f'key file {path!r} must be JSON {{"current": ID, "keys": {{ID: base64, ...}}}}'
        )
    return data


def _write_keys(path: str, data: dict[str, Any]) -> None:
    target = Path(path)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=".keys-")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            json.dump(data, fh, indent=2, sort_keys=True)
        os.chmod(tmp, 0o600)
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _store(args: argparse.Namespace, url: str | None = None, keys: str | None = None) -> Any:
    url = url or args.store or os.environ.get("OAUTH2_BROKER_STORE")
    if not url:
        raise CommandError("name the store with --store URL (or OAUTH2_BROKER_STORE)")
    keys = keys if keys is not None else getattr(args, "keys", None)
    return open_store(url, keyring=_keyring(keys))


def load_descriptor(spec: str, preset_args: Sequence[str] = ()) -> ProviderDescriptor:
    """A preset by name (``google``), or a descriptor file (``.toml`` / ``.json``)."""
    kwargs: dict[str, str] = {}
    for item in preset_args:
        name, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"--preset-arg wants NAME=VALUE; got {item!r}")
        kwargs[name] = value
    path = Path(spec)
    if path.suffix in (".toml", ".json") or path.exists():
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise CommandError(f"cannot read provider file {spec!r}: {exc.strerror}") from None
        if path.suffix == ".json":
            return ProviderDescriptor.from_json(text)
        return ProviderDescriptor.from_toml(text)
    from . import presets

    return presets.preset(spec, **kwargs)


def _broker(args: argparse.Namespace, store: TokenStore) -> Any:
    from .broker import Broker

    if not args.provider:
        raise CommandError("name the provider with --provider NAME|FILE")
    client_id = args.client_id or os.environ.get("OAUTH2_BROKER_CLIENT_ID")
    if not client_id:
        raise CommandError("name the client with --client-id (or OAUTH2_BROKER_CLIENT_ID)")
    return Broker(
        load_descriptor(args.provider, args.preset_arg),
        client_id=client_id,
        client_secret=os.environ.get(CLIENT_SECRET_ENV) or None,
        store=store,
    )


def _all_keys(
    store: TokenStore, tenant: str | None, principal: str | None = None
) -> list[StoreKey]:
    if tenant is None:
        if not isinstance(store, RefreshIndex):
            raise CommandError(f"{type(store).__name__} cannot list tenants: pass --tenant")
        tenants: list[TenantId] = store.list_tenants()
    else:
        tenants = [TenantId(tenant)]
    return [k for t in tenants for k in store.list_keys(t, principal)]


def _one_key(args: argparse.Namespace, store: TokenStore) -> StoreKey:
    matches = [
        k
        for k in store.list_keys(TenantId(args.tenant), args.principal)
        if args.provider_id is None or k.provider == args.provider_id
    ]
    if args.scopes is not None:
        wanted = StoreKey.build(args.tenant, args.principal, matches[0].provider, args.scopes)
        matches = [k for k in matches if k.scope_fingerprint == wanted.scope_fingerprint]
    if len(matches) != 1:
        raise CommandError(
            f"{len(matches)} connections match tenant={args.tenant!r} "
            f"principal={args.principal!r}; narrow it with --provider-id / --scopes"
        )
    return matches[0]


# -- commands ----------------------------------------------------------------------------------
def cmd_connections_list(args: argparse.Namespace) -> int:
    store = _store(args)
    keys = _all_keys(store, args.tenant, args.principal)
    progress = Progress(len(keys), "reading", args.progress)
    now = time.time()
    rows: list[dict[str, Any]] = []
    unreadable = 0
    for key in keys:
        try:
            record = store.get(key)
        except CorruptRecord:
            unreadable += 1
            record = None
        if record is not None and (args.provider_id is None or key.provider == args.provider_id):
            rows.append(record_summary(record, now))
        progress.step()
    rows.sort(key=lambda r: (r["tenant"], r["principal"], r["provider"], r["scope_fingerprint"]))
    lines = [
        f"{r['tenant']}\t{r['principal']}\t{r['provider']}\t{r['status']}\t"
        f"expires_at={r['expires_at']}\tv{r['version']}"
        for r in rows
    ]
    lines.append(f"{len(rows)} connection(s)" + (f", {unreadable} unreadable" * bool(unreadable)))
    _emit(args, {"connections": rows, "unreadable": unreadable}, lines)
    store.close()
    return 0


def cmd_connections_show(args: argparse.Namespace) -> int:
    store = _store(args)
    record = store.get(_one_key(args, store))
    if record is None:
        raise CommandError("the connection disappeared while reading it")
    summary = record_summary(record, time.time())
    _emit(args, summary, [f"{k}: {v}" for k, v in summary.items()])
    store.close()
    return 0


def _broker_and_key(args: argparse.Namespace) -> tuple[Any, StoreKey]:
    """The broker of ``--provider`` and the one connection of it the arguments name."""
    store = _store(args)
    broker = _broker(args, store)
    args.provider_id = broker.provider.id
    return broker, _one_key(args, store)


def cmd_refresh(args: argparse.Namespace) -> int:
    broker, key = _broker_and_key(args)
    record = broker.refresh_key(key)
    summary = record_summary(record, time.time())
    _emit(args, summary, [f"refreshed: version {record.version}, expires_at={record.expires_at}"])
    broker.close()
    return 0


def cmd_revoke(args: argparse.Namespace) -> int:
    broker, key = _broker_and_key(args)
    store = broker.store
    record = store.get(key)
    scopes = None if record is None else list(record.requested_scopes.scopes)
    queued: list[RevocationQueued] = []
    broker.subscribe(lambda e: queued.append(e) if isinstance(e, RevocationQueued) else None)
    removed = broker.revoke(tenant=key.tenant, principal=key.principal, scopes=scopes)
    broker.events.flush()
    still = store.get(key)
    at_provider = removed and not queued
    result: dict[str, JSONValue] = {
        "revoked_at_provider": at_provider,
        "queued": bool(queued),
        "removed": still is None,
    }
    line = (
        f"forgotten; the provider is unavailable ({queued[0].error}): revocation queued, "
        "delivered by the refresher"
        if queued
        else f"revoked (at the provider: {'yes' if at_provider else 'no'})"
    )
    _emit(args, result, [line])
    broker.close()
    return 0


_DELETE_ONLY = (
    "no client configured (--provider and --client-id): deleting only, nothing is revoked "
    "at the provider; the tokens stay valid there until they expire"
)


def _delete_all(args: argparse.Namespace, keys: list[StoreKey], what: str) -> int:
    """The delete-only path: bulk deletion (1,000 keys per call), no provider call."""
    store = _store(args)
    bulk = bulk_deletion(store)
    progress = Progress(len(keys), "deleting", args.progress)
    removed = 0
    for start in range(0, len(keys), 1000):
        chunk = keys[start : start + 1000]
        removed += bulk.delete_keys(chunk)
        progress.step(len(chunk))
    pending = bulk.delete_pending(TenantId(args.tenant)) if args.principal is None else 0
    if not args.json:
        print(f"oauth2-broker: {_DELETE_ONLY}", file=sys.stderr)
    data = {"removed": removed, "found": len(keys), "revoked": 0, "delete_only": True}
    if args.principal is None:
        data["pending_removed"] = pending
    _emit(args, data, [f"{what}: {removed} record(s) removed (deleted only, not revoked)"])
    store.close()
    return 0


def _forget_with_client(args: argparse.Namespace, what: str) -> int:
    """Revoke at the provider through the broker, then delete; other providers' rows (no
    client for them here) are deleted only, and reported."""
    store = _store(args)
    broker = _broker(args, store)
    tenant = TenantId(args.tenant)
    if args.principal is None:
        progress = Progress(len(store.list_keys(tenant)), "revoking", args.progress)
        report = broker.forget_tenant(
            tenant, queue=False, progress=lambda done, total: progress.step(done - progress.done)
        )
    else:
        report = broker.forget_principal(tenant, args.principal)
    bulk = bulk_deletion(store)
    others = store.list_keys(tenant, args.principal)
    removed = report.deleted + (bulk.delete_keys(others) if others else 0)
    data: dict[str, Any] = {
        "found": len(report.revoked)
        + len(report.revocation_failed)
        + len(report.unrevocable)
        + len(others),
        "removed": removed,
        "revoked": len(report.revoked),
        "revocation_failed": len(report.revocation_failed),
        "queued": len(report.queued),
        "unrevocable": len(report.unrevocable) + len(others),
        "delete_only": False,
    }
    if args.principal is None:
        data["pending_removed"] = bulk.delete_pending(tenant)
    lines = [
        f"{what}: {removed} record(s) removed, {data['revoked']} revoked at the provider"
        + (
            f", {data['revocation_failed']} not taken by the provider"
            * bool(data["revocation_failed"])
        )
        + (f", {data['unrevocable']} of other providers deleted only" * bool(data["unrevocable"]))
    ]
    _emit(args, data, lines)
    broker.close()
    store.close()
    return 1 if report.revocation_failed else 0


def _forget(args: argparse.Namespace, what: str) -> int:
    if not getattr(args, "provider", None):
        store = _store(args)
        keys = store.list_keys(TenantId(args.tenant), args.principal)
        store.close()
        return _delete_all(args, keys, what)
    return _forget_with_client(args, what)


def cmd_forget_principal(args: argparse.Namespace) -> int:
    return _forget(args, f"forgot principal {args.principal!r}")


def cmd_offboard_tenant(args: argparse.Namespace) -> int:
    args.principal = None
    return _forget(args, f"offboarded tenant {args.tenant!r}")


def _reencrypt(args: argparse.Namespace, keys_path: str) -> int:
    from .stores.encrypted import EncryptedStore

    inner = _store(args, keys="")
    store = EncryptedStore(inner, _keyring(keys_path))
    report = store.reencrypt_all()
    data: JSONValue = {
        "reencrypted": report.reencrypted,
        "already_current": report.already_current,
        "unreadable": len(report.unreadable),
    }
    _emit(
        args,
        data,
        [
            f"re-encrypted {report.reencrypted}, already current {report.already_current}, "
            f"unreadable {len(report.unreadable)}"
        ],
    )
    store.close()
    return 1 if report.unreadable else 0


def cmd_keys_reencrypt(args: argparse.Namespace) -> int:
    if not args.keys:
        raise CommandError("keys reencrypt needs --keys FILE")
    return _reencrypt(args, args.keys)


def cmd_keys_rotate(args: argparse.Namespace) -> int:
    if not args.keys:
        raise CommandError("keys rotate needs --keys FILE")
    from .stores.encrypted import KeyRing

    data = _read_keys(args.keys)
    new_id = args.new_key_id or f"k{int(time.time())}"
    if new_id in data["keys"]:
        raise CommandError(f"key id {new_id!r} is already in {args.keys!r}")
    data["keys"][new_id] = base64.b64encode(KeyRing.generate_key()).decode()
    data["current"] = new_id
    KeyRing.from_base64(data["keys"], new_id)  # validates before anything is written
    _write_keys(args.keys, data)
    print(f"new current key {new_id!r} written to {args.keys}", file=sys.stderr)
    return _reencrypt(args, args.keys)


def _same(a: TokenRecord, b: TokenRecord) -> bool:
    return a.with_version(0).to_json() == b.with_version(0).to_json()


def cmd_migrate(args: argparse.Namespace) -> int:
    source = _store(args, url=args.source, keys=args.from_keys or "")
    target = _store(args, url=args.target, keys=args.to_keys or "")
    keys = _all_keys(source, args.tenant)
    progress = Progress(len(keys), "migrating", args.progress)
    counts = {"copied": 0, "already_there": 0, "unreadable": 0, "mismatched": 0, "vanished": 0}

    def copy(key: StoreKey) -> str:
        try:
            record = source.get(key)
        except CorruptRecord:
            return "unreadable"
        if record is None:
            return "vanished"
        existing = target.get(key)
        if existing is not None and _same(existing, record):
            return "already_there"  # resumable: a second run skips what the first copied
        target.put(record)
        back = target.get(key)
        return "copied" if back is not None and _same(back, record) else "mismatched"

    with ThreadPoolExecutor(args.workers) as pool:
        for outcome in pool.map(copy, keys):
            counts[outcome] += 1
            progress.step()
    data: JSONValue = {"records": len(keys), **counts}
    _emit(args, data, [", ".join(f"{k} {v}" for k, v in {"records": len(keys), **counts}.items())])
    source.close()
    target.close()
    return 1 if counts["mismatched"] or counts["unreadable"] else 0


def cmd_providers_check(args: argparse.Namespace) -> int:
    from .discovery import discover

    descriptor = load_descriptor(args.spec, args.preset_arg)
    issuer = args.issuer or descriptor.issuer
    if not issuer:
        raise CommandError(
            f"provider {descriptor.id!r} names no issuer to discover; pass --issuer URL"
        )
    if "{" in issuer:
        raise CommandError(f"issuer {issuer!r} is templated: fill it with --preset-arg NAME=VALUE")
    found = discover(issuer, id=descriptor.id)
    mismatches: list[dict[str, Any]] = []
    offered: list[dict[str, Any]] = []  # discovery has it, the descriptor does not use it
    for name in _ENDPOINTS:
        ours, theirs = getattr(descriptor, name), getattr(found, name)
        if theirs is None or ours == theirs:
            continue
        entry = {"field": name, "descriptor": ours, "discovered": theirs}
        (offered if ours is None else mismatches).append(entry)
    lines = [
        f"MISMATCH {m['field']}: descriptor {m['descriptor']!r}, discovery {m['discovered']!r}"
        for m in mismatches
    ]
    lines += [f"not in the descriptor: {m['field']} = {m['discovered']!r}" for m in offered]
    lines.append(
        f"{descriptor.id}: {len(mismatches)} mismatch(es) with {issuer}"
        if mismatches
        else f"{descriptor.id}: matches the discovery document of {issuer}"
    )
    data = {
        "provider": descriptor.id,
        "issuer": issuer,
        "mismatches": mismatches,
        "not_in_descriptor": offered,
    }
    _emit(args, data, lines)
    return 1 if mismatches else 0


def cmd_refresher(args: argparse.Namespace) -> int:
    from .refresher import Refresher
    from .refresher import SweepReport

    store = _store(args)
    broker = _broker(args, store)

    def report(sweep: SweepReport) -> None:
        if args.json:
            print(json.dumps(sweep.to_dict(), sort_keys=True), flush=True)
        elif sweep.due:
            print(
                f"due {sweep.due}: refreshed {sweep.refreshed}, failed {sweep.failed}, "
                f"re-authorization required {sweep.reauthorization_required}",
                flush=True,
            )

    refresher = Refresher(
        [broker],
        window=args.window,
        concurrency=args.concurrency,
        interval=args.interval,
        on_sweep=report,
    )

    async def run() -> None:
        try:
            await refresher.run(sweeps=1 if args.once else None)
        finally:
            await broker.aclose()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        print("stopped", file=sys.stderr)
    return 0


# -- the parser --------------------------------------------------------------------------------
def _common(p: argparse.ArgumentParser, *, store: bool = True) -> None:
    if store:
        p.add_argument("--store", help="store URL (default: $OAUTH2_BROKER_STORE)")
        p.add_argument("--keys", help="JSON key ring file for an encrypted store")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=sys.stderr.isatty(),
        help="progress bar on stderr (default: when stderr is a terminal)",
    )


def _client(p: argparse.ArgumentParser) -> None:
    p.add_argument("--provider", help="preset name or descriptor file (.toml/.json)")
    p.add_argument("--preset-arg", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument(
        "--client-id", help=f"default $OAUTH2_BROKER_CLIENT_ID; secret: ${CLIENT_SECRET_ENV}"
    )


def _which(p: argparse.ArgumentParser, *, principal: bool = True) -> None:
    p.add_argument("--tenant", required=True)
    if principal:
        p.add_argument("--principal", required=True)
        p.add_argument("--scopes", help="the connection's scopes, space-separated")


def add_commands(commands: Any) -> None:
    """Add the admin commands to the ``oauth2-broker`` subcommand parser."""

    def add(
        name: str, handler: Callable[[argparse.Namespace], int], help: str, parent: Any = None
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = (parent or commands).add_parser(
            name, help=help, description=help
        )
        p.set_defaults(handler=handler)
        return p

    conns = commands.add_parser("connections", help="list or show stored connections")
    sub = conns.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = add("list", cmd_connections_list, "list connections (metadata only, never a token)", sub)
    _common(p)
    p.add_argument("--tenant")
    p.add_argument("--principal")
    p.add_argument("--provider-id")
    p = add("show", cmd_connections_show, "show one connection (metadata only)", sub)
    _common(p)
    _which(p)
    p.add_argument("--provider-id")

    p = add("refresh", cmd_refresh, "refresh one connection now")
    _common(p)
    _client(p)
    _which(p)
    p = add("revoke", cmd_revoke, "revoke one connection at the provider and forget it")
    _common(p)
    _client(p)
    _which(p)
    p = add(
        "forget-principal",
        cmd_forget_principal,
        "revoke (with --provider/--client-id) and delete every connection of a principal",
    )
    _common(p)
    _client(p)
    p.add_argument("--tenant", required=True)
    p.add_argument("--principal", required=True)
    p = add(
        "offboard-tenant",
        cmd_offboard_tenant,
        "revoke (with --provider/--client-id) and delete every connection and pending login "
        "of a tenant",
    )
    _common(p)
    _client(p)
    p.add_argument("--tenant", required=True)

    keys = commands.add_parser("keys", help="encryption keys of an EncryptedStore")
    ksub = keys.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = add("rotate", cmd_keys_rotate, "add a new current key to --keys and re-encrypt", ksub)
    _common(p)
    p.add_argument("--new-key-id")
    p = add("reencrypt", cmd_keys_reencrypt, "re-encrypt every record under the current key", ksub)
    _common(p)

    p = add("migrate", cmd_migrate, "copy every record to another store, verified, resumable")
    _common(p, store=False)
    p.add_argument("--from", dest="source", required=True, help="source store URL")
    p.add_argument("--to", dest="target", required=True, help="target store URL")
    p.add_argument("--from-keys", help="key ring file of an encrypted source")
    p.add_argument("--to-keys", help="key ring file of an encrypted target")
    p.add_argument("--tenant", help="only this tenant")
    p.add_argument("--workers", type=int, default=4, help="parallel copies (default 4)")
    p.set_defaults(store=None)

    prov = commands.add_parser("providers", help="provider descriptors")
    psub = prov.add_subparsers(dest="subcommand", metavar="SUBCOMMAND", required=True)
    p = add("check", cmd_providers_check, "compare a descriptor with the issuer's discovery", psub)
    _common(p, store=False)
    p.add_argument("spec", metavar="NAME|FILE")
    p.add_argument("--preset-arg", action="append", default=[], metavar="NAME=VALUE")
    p.add_argument("--issuer", help="discover this issuer instead of the descriptor's")

    p = add("refresher", cmd_refresher, "run the proactive refresher in the foreground")
    _common(p)
    _client(p)
    p.add_argument("--window", type=float, default=300.0)
    p.add_argument("--interval", type=float, default=30.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--once", action="store_true", help="one sweep, then exit")


def run(args: argparse.Namespace) -> int:
    """Run a parsed admin command; typed errors become a message on stderr and exit code 2."""
    try:
        code: int = args.handler(args)
        return code
    except CommandError as exc:
        print(f"oauth2-broker: {exc}", file=sys.stderr)
        return 2
    except BrokerError as exc:
        print(f"oauth2-broker: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2 if isinstance(exc, ConfigurationError) else 1
