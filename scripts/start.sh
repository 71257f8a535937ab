#!/usr/bin/env bash
# Quick start: installs wsi-node into .venv on first use, then starts it with its embedded defaults.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/wsi-node demo "$@"
