#!/usr/bin/env bash
# Installs everything the tests need, starts the services they use if they are down, runs them all.
# Used by the README and by .ci/run, so a missing install step fails CI instead of hiding.
set -euo pipefail
cd "$(dirname "$0")/.."

as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else return 1; fi; }

# The Python to install into: the active virtualenv, else .venv in this checkout (created here
# from $PYTHON, default python3). Never the system Python, which Debian marks externally managed.
if [ -n "${VIRTUAL_ENV:-}" ] && [ -x "$VIRTUAL_ENV/bin/python" ]; then
  VENV_PYTHON="$VIRTUAL_ENV/bin/python"
else
  if [ ! -x .venv/bin/python ]; then
    echo "creating a virtual environment in .venv"
    if ! "${PYTHON:-python3}" -m venv .venv; then
      # Debian ships venv's pip bootstrap separately.
      rm -rf .venv
      if command -v apt-get >/dev/null; then
        as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq python3-venv >/dev/null || true
      fi
      "${PYTHON:-python3}" -m venv .venv || { echo "could not create .venv: install python3-venv" >&2; exit 1; }
    fi
  fi
  VENV_PYTHON="$PWD/.venv/bin/python"
fi
"$VENV_PYTHON" -m pip install --quiet --disable-pip-version-check -e '.[test]'

# Headless Chromium for the browser tests and nginx for the reverse-proxy test come from Debian
# (playwright cannot download browsers here).
if { [ ! -x /usr/bin/chromium ] || [ ! -x /usr/sbin/nginx ]; } && command -v apt-get >/dev/null; then
  echo "installing Debian's chromium and nginx for the browser and proxy tests"
  as_root apt-get update -qq && as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium nginx >/dev/null \
    || echo "could not install chromium/nginx: the tests that need them will say so"
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

# Lint and format: the same rules for every contributor (pyproject.toml's [tool.ruff]).
"$VENV_PYTHON" -m ruff check pushsvc tests bench
"$VENV_PYTHON" -m ruff format --check pushsvc tests bench

# Types: mypy --strict over pushsvc/ and tests/ (pyproject.toml's [tool.mypy]).
"$VENV_PYTHON" -m mypy

# The chat's sync algorithm (web/sync.js) has its own unit tests.
if command -v node >/dev/null; then
  node --test tests/js/*.test.mjs
elif [[ "${CI:-}" =~ ^([Tt]rue|TRUE|1|[Yy]es)$ ]]; then
  echo "node is not installed: the JavaScript unit tests cannot run (CI=true, so this fails)" >&2
  exit 1
else
  echo "node is not installed: skipping the JavaScript unit tests (tests/js/*.test.mjs)"
fi

# The unit and process tiers (trial test cases), then the real-socket integration tier
# (pytest-twisted tests, tests/integration) in a run of its own: pytest-twisted keeps the reactor
# running in a greenlet for its whole session, which trial's test cases cannot share. A run
# given test paths runs only those.
named=0
for arg in "$@"; do [ -e "${arg%%::*}" ] && named=1; done
"$VENV_PYTHON" -m pytest "$@"
if [ "$named" = 0 ]; then
  "$VENV_PYTHON" -m pytest tests/integration "$@"
fi
