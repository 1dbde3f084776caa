#!/usr/bin/env bash
# Make sure the local Redis and PostgreSQL the tests and the demo use are up; start them if
# they are installed here but down. Prints what it did; fails with a clear message otherwise.
set -euo pipefail

redis_host=${REDIS_HOST:-127.0.0.1}
redis_port=${REDIS_PORT:-6379}
pg_host=${PGHOST:-127.0.0.1}
pg_port=${PGPORT:-5432}

port_open() { (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null; }

wait_port() {
  for _ in $(seq 1 50); do port_open "$1" "$2" && return 0; sleep 0.2; done
  return 1
}

if port_open "$redis_host" "$redis_port"; then
  echo "redis: up on $redis_host:$redis_port"
elif command -v redis-server >/dev/null; then
  echo "redis: down, starting it"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$redis_port" --save "" \
    --appendonly no --dir /var/lib/redis --logfile /var/log/redis/ci.log
  wait_port "$redis_host" "$redis_port" || { echo "redis did not start" >&2; exit 1; }
else
  echo "redis is not reachable on $redis_host:$redis_port and redis-server is not installed" >&2
  exit 1
fi

if port_open "$pg_host" "$pg_port"; then
  echo "postgres: up on $pg_host:$pg_port"
elif command -v pg_ctlcluster >/dev/null && [ -d /etc/postgresql ]; then
  echo "postgres: down, starting it"
  pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | sort -V | tail -1)" main start
  wait_port "$pg_host" "$pg_port" || { echo "postgres did not start" >&2; exit 1; }
else
  echo "postgres is not reachable on $pg_host:$pg_port and no local cluster is installed" >&2
  exit 1
fi
