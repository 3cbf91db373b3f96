#!/usr/bin/env bash
# Make sure PostgreSQL (127.0.0.1:5432, database "test") and Redis (127.0.0.1:6379) answer,
# starting the machine's own services if they are installed but stopped. Idempotent.
# Used by `make test` under CI=true; elsewhere the store tests skip when a service is missing.
set -uo pipefail

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

if ! port_open 6379 && command -v redis-server >/dev/null 2>&1; then
  echo "services: starting redis-server"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || true
fi

if ! port_open 5432 && command -v pg_ctlcluster >/dev/null 2>&1; then
  echo "services: starting PostgreSQL"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || true
fi

for _ in $(seq 1 30); do
  if port_open 6379 && port_open 5432; then break; fi
  sleep 1
done

if port_open 5432 && command -v psql >/dev/null 2>&1; then
  if ! psql -h 127.0.0.1 -U postgres -d test -c 'select 1' >/dev/null 2>&1; then
    psql -h 127.0.0.1 -U postgres -c 'create database test' >/dev/null 2>&1 || true
  fi
fi

port_open 6379 && echo "services: redis up" || echo "services: redis NOT reachable"
port_open 5432 && echo "services: postgres up" || echo "services: postgres NOT reachable"
exit 0
