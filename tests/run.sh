#!/usr/bin/env bash
# The whole test suite from a clean checkout: installs what it needs (Python packages, Debian's
# redis-server, chromium and nginx, the Kafka jars from Maven Central, npm packages), then runs the
# JS counter's unit and browser tests and the Python suite (unit, chdb integration, end-to-end
# over real processes, Kafka + Redis). Usage: bash tests/run.sh [extra pytest args]
set -euo pipefail
cd "$(dirname "$0")/.."

python3 -m pip install -q --disable-pip-version-check -e '.[test,scale]'

missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || missing+=(nginx-light)  # `nginx -t` on deploy/nginx.conf
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ]; then
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  else
    echo "tests/run.sh: please install: ${missing[*]} (apt-get install -y ${missing[*]})" >&2
    exit 2
  fi
fi

# The JS counter: build with its size budget, unit tests, then browser tests against `skvoz run`.
npm ci --prefix js-snippet --no-audit --no-fund --loglevel=error
npm --prefix js-snippet test
npm --prefix js-snippet run test:e2e

# Python last, so its summary closes the output: unit, chdb, end-to-end, and the scale-out
# tests over a real Kafka broker and Redis (tests/test_scaleout_*.py, about 5 minutes).
python3 -m pytest -q -p no:cacheprovider "$@"
