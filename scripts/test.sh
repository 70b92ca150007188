#!/usr/bin/env bash
# Installs everything the tests need, starts the services they use if they are down, runs them all.
# Used by the README and by .ci/run, so a missing install step fails CI instead of hiding.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
"$PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# Headless Chromium for the browser tests comes from Debian (playwright cannot download browsers here).
if [ ! -x /usr/bin/chromium ] && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium for the browser tests"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null \
    || echo "could not install chromium: browser tests will say so"
fi

# The official pusher-js client, for the compatibility tests.
if command -v npm >/dev/null && [ -f tests/js/package.json ]; then
  npm ci --prefix tests/js --no-audit --no-fund --silent || npm install --prefix tests/js --no-audit --no-fund --silent
fi

# Redis and PostgreSQL on their usual loopback ports.
if command -v redis-cli >/dev/null && ! redis-cli -h 127.0.0.1 -p 6379 ping >/dev/null 2>&1; then
  echo "starting redis-server"
  mkdir -p /var/lib/redis /var/log/redis 2>/dev/null || true
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no \
    --dir /var/lib/redis --logfile /var/log/redis/ci.log || echo "could not start redis-server"
fi
if command -v pg_isready >/dev/null && ! pg_isready -q -h 127.0.0.1 -p 5432; then
  echo "starting PostgreSQL"
  as_root pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -n1)" main start \
    || echo "could not start PostgreSQL"
fi

exec "$PYTHON" -m pytest "$@"
