#!/usr/bin/env bash
# Shared set-up for quickstart.sh and tests/run.sh, safe to run again and again:
#   - Debian packages (only those missing; needs root or sudo),
#   - a virtual environment in .venv with the project installed,
#   - a reachable Redis for the broker (started locally when none answers).
# Usage: source .ci/bootstrap.sh [runtime|test]
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
MODE="${1:-runtime}"

say() { printf '\033[1m[dicom-router]\033[0m %s\n' "$*" >&2; }

apt_install() {
  local missing=()
  for pkg in "$@"; do
    dpkg -s "$pkg" >/dev/null 2>&1 || missing+=("$pkg")
  done
  [ ${#missing[@]} -eq 0 ] && return 0
  local sudo=""
  if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then sudo="sudo"; else
      say "missing Debian packages: ${missing[*]} (run as root or install them yourself)"; return 1
    fi
  fi
  say "installing Debian packages: ${missing[*]}"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}" >/dev/null
}

PY="${PYTHON:-python3}"
if ! command -v "$PY" >/dev/null 2>&1 || ! "$PY" -c 'import venv, ensurepip' 2>/dev/null; then
  apt_install python3 python3-venv
fi
if [ "$MODE" = "test" ]; then
  apt_install dcmtk orthanc dicom3tools redis-server prometheus
else
  apt_install dcmtk
fi
if [ ! -x "$ROOT/.venv/bin/python" ]; then
  say "creating virtual environment in .venv"
  "$PY" -m venv "$ROOT/.venv"
fi
STAMP="$ROOT/.venv/.installed-$MODE"
if [ ! -f "$STAMP" ] || [ "$ROOT/pyproject.toml" -nt "$STAMP" ]; then
  say "installing Python packages ($MODE)"
  "$ROOT/.venv/bin/pip" install -q --upgrade pip >/dev/null
  if [ "$MODE" = "test" ]; then
    "$ROOT/.venv/bin/pip" install -q -e "$ROOT[test]"
  else
    "$ROOT/.venv/bin/pip" install -q -e "$ROOT"
  fi
  touch "$STAMP"
fi

redis_up() { "$ROOT/.venv/bin/python" - "$1" <<'PY'
import sys, redis
try:
    redis.Redis.from_url(sys.argv[1], socket_connect_timeout=1).ping()
except Exception:
    sys.exit(1)
PY
}

ensure_redis() {
  local url="$1"
  if redis_up "$url"; then return 0; fi
  if ! command -v redis-server >/dev/null 2>&1; then
    apt_install redis-server || { say "no Redis at $url: install redis-server or set broker_url"; return 1; }
  fi
  say "starting a local Redis on 127.0.0.1:6379"
  mkdir -p "$ROOT/var/redis"
  redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --dir "$ROOT/var/redis" \
    --appendonly yes --maxmemory-policy noeviction --logfile "$ROOT/var/redis/redis.log"
  for _ in $(seq 50); do redis_up "$url" && return 0; sleep 0.1; done
  say "Redis did not start; see var/redis/redis.log"; return 1
}
