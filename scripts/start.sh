#!/usr/bin/env bash
# Quick start: installs wsi-node into .venv on first use, then starts the node with its embedded
# defaults: DICOM AE WSINODE on port 11112, folders under ./data, SQLite state. Extra arguments go to
# `wsi-node serve` (see `.venv/bin/wsi-node serve --help`). Stop it with Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/bootstrap.sh
exec .venv/bin/wsi-node serve "$@"
