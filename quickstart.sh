#!/usr/bin/env bash
# One command: set up and run the router with the sample config.
# Ready for `storescu -aec ROUTER 127.0.0.1 11112 FILE.dcm` once it logs "router listening".
set -euo pipefail
cd "$(dirname "$0")"
source .ci/bootstrap.sh runtime
if [ ! -s var/salt ]; then
  say "creating a random secret salt in var/salt"
  mkdir -p var && (umask 077 && head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \n' > var/salt)
fi
if [ ! -f router.yaml ]; then
  say "writing router.yaml from router.example.yaml"
  sed 's/min_free_mb: 1024/min_free_mb: 256/' router.example.yaml > router.yaml
fi
ensure_redis "$(.venv/bin/python -c 'from router.config import load_config; print(load_config("router.yaml").broker_url)')"
.venv/bin/dicom-router --config router.yaml rules lint
exec .venv/bin/dicom-router --config router.yaml serve --workers "${ROUTER_WORKERS:-2}"
