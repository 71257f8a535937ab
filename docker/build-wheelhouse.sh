#!/bin/sh
# On a machine with internet access: wheels of wsi-node and all its dependencies into docker/wheelhouse,
# for the Python and platform of the image (default: CPython 3.11, manylinux x86_64). Copy the repository
# with docker/wheelhouse to the offline machine and run docker/build.sh there.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out="$here/wheelhouse"
python_version=${PYTHON_VERSION:-3.11}
platform=${PLATFORM:-manylinux2014_x86_64}
mkdir -p "$out"
python3 -m pip wheel --no-deps --wheel-dir "$out" "$repo"
python3 -m pip download --dest "$out" --only-binary=:all: \
    --python-version "$python_version" --platform "$platform" --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform any "$out"/wsi_node-*.whl
echo "wheelhouse ready: $out ($(ls "$out" | wc -l) files)"
