"""``oauth2-broker migrate`` at scale: 100,000 encrypted records SQLite → PostgreSQL → SQLite.

Run: ``.venv/bin/python benchmarks/migrate.py`` (``--records 10000`` for a shorter run,
``--workers 4``).

The source is an ``EncryptedStore`` over SQLite (key ring A), bulk-loaded with the loader of
``stores.py``. The CLI's ``migrate`` copies it to an ``EncryptedStore`` over PostgreSQL (key
ring B, so every record is decrypted and sealed again), then back to a new SQLite file (key
ring A). Afterwards every record is read from the final store, decrypted, and compared byte for
byte (canonical JSON, version aside) with the record generated at the start. It prints the
records per second of each leg and of a bare ``put`` loop into the same target (the baseline:
what one write costs without the read-back verification).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import os
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

from stores import POSTGRES_DSN
from stores import record_of
from stores import sqlite_bench

from oauth2_broker_mw.__main__ import main as cli
from oauth2_broker_mw.stores import open_store
from oauth2_broker_mw.stores.encrypted import EncryptedStore
from oauth2_broker_mw.stores.encrypted import KeyRing


def keyfile(path: Path, key_id: str) -> tuple[Path, KeyRing]:
    key = base64.b64encode(os.urandom(32)).decode()
    path.write_text(json.dumps({"current": key_id, "keys": {key_id: key}}))
    return path, KeyRing.from_base64({key_id: key}, key_id)


def run_cli(*argv: str) -> dict[str, int]:
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        code = cli(list(argv))
    if code != 0:
        raise SystemExit(f"migrate failed ({code}): {out.getvalue()}")
    result: dict[str, int] = json.loads(out.getvalue())
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    import psycopg

    conninfo = psycopg.conninfo.conninfo_to_dict(POSTGRES_DSN)
    schema = f"o2bm_migrate_{uuid.uuid4().hex[:8]}"
    pg_url = (
        f"postgresql://{conninfo.get('user', 'postgres')}@{conninfo.get('host', '127.0.0.1')}:"
        f"{conninfo.get('port', 5432)}/{conninfo.get('dbname', 'test')}?schema={schema}"
    )
    now = time.time()
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        keys_a, ring_a = keyfile(tmp / "a.json", "a1")
        keys_b, _ = keyfile(tmp / "b.json", "b1")
        originals = [
            replace(record_of(i, now), expires_at=now + i, metadata={"n": i})
            for i in range(args.records)
        ]
        bench = sqlite_bench(tmp)  # creates tmp/bench.db with the current schema
        sealer = EncryptedStore(bench.store, ring_a)
        started = time.perf_counter()
        for lo in range(0, len(originals), 20_000):
            bench.load([sealer.seal_record(r) for r in originals[lo : lo + 20_000]])
        print(
            f"# loaded {args.records:,} encrypted records in {time.perf_counter() - started:.0f}s",
            file=sys.stderr,
        )
        src = f"sqlite:///{tmp}/bench.db"
        back = f"sqlite:///{tmp}/back.db"
        legs = []
        try:
            for label, frm, fk, to, tk in (
                ("SQLite → PostgreSQL", src, keys_a, pg_url, keys_b),
                ("PostgreSQL → SQLite", pg_url, keys_b, back, keys_a),
            ):
                started = time.perf_counter()
                report = run_cli(
                    "migrate",
                    "--from",
                    frm,
                    "--from-keys",
                    str(fk),
                    "--to",
                    to,
                    "--to-keys",
                    str(tk),
                    "--workers",
                    str(args.workers),
                    "--json",
                    "--no-progress",
                )
                took = time.perf_counter() - started
                assert report["copied"] == args.records, report
                assert report["mismatched"] == 0, report
                legs.append((label, took, report))
            started = time.perf_counter()
            report = run_cli(
                "migrate",
                "--from",
                src,
                "--from-keys",
                str(keys_a),
                "--to",
                back,
                "--to-keys",
                str(keys_a),
                "--workers",
                str(args.workers),
                "--json",
                "--no-progress",
            )
            legs.append(("re-run (resume, nothing to copy)", time.perf_counter() - started, report))
            assert report["already_there"] == args.records, report
            final = open_store(back, keyring=ring_a)
            started = time.perf_counter()
            for original in originals:
                got = final.get(original.key)
                assert got is not None, original.key
                assert got.with_version(0).to_json() == original.with_version(0).to_json()
            verify = time.perf_counter() - started
            final.close()
            # baseline: bare puts into an encrypted PostgreSQL target, no read-back
            base = open_store(pg_url.replace(schema, schema + "_b"), keyring=ring_a)
            sample = originals[: min(5000, args.records)]
            started = time.perf_counter()
            for record in sample:
                base.put(record)
            put_rate = len(sample) / (time.perf_counter() - started)
            base.close()
        finally:
            bench.cleanup()
            with psycopg.connect(POSTGRES_DSN, autocommit=True) as conn:
                for s in (schema, schema + "_b"):
                    conn.execute(f'DROP SCHEMA IF EXISTS "{s}" CASCADE')
    print("| leg | records | seconds | records/s | report |")
    print("|---|---|---|---|---|")
    for label, took, report in legs:
        print(
            f"| {label} | {args.records:,} | {took:.1f} | {args.records / took:,.0f} | "
            f"{json.dumps(report, sort_keys=True)} |"
        )
    print(
        f"| final byte-for-byte check (decrypted) | {args.records:,} | {verify:.1f} | "
        f"{args.records / verify:,.0f} | all identical |"
    )
    print(
        f"| baseline: bare put into encrypted PostgreSQL, 1 thread | {len(sample):,} | | "
        f"{put_rate:,.0f} | |"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
