#!/bin/sh
# Build the image without internet access from docker/wheelhouse (see build-wheelhouse.sh).
# BASE_IMAGE: a Python 3.11 image present locally or in the hospital's registry, e.g.
#   BASE_IMAGE=registry.hospital.local/python:3.11-slim docker/build.sh
set -eu
here=$(cd "$(dirname "$0")" && pwd)
if ! ls "$here"/wheelhouse/wsi_node-*.whl >/dev/null 2>&1; then
    echo "no wsi-node wheel in $here/wheelhouse: run docker/build-wheelhouse.sh first" >&2
    exit 2
fi
exec docker build --build-arg "BASE_IMAGE=${BASE_IMAGE:-python:3.11-slim-bookworm}" \
    --tag "${IMAGE:-wsi-node:latest}" "$@" "$here"
