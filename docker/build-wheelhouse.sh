#!/bin/sh
# On a machine with internet access: wheels of wsi-node and all its dependencies into docker/wheelhouse.
# Run it with the same Python minor version (3.11) and CPU architecture as the image's base: pip builds
# wheels for packages published only as source (e.g. pyvips) on this machine, so they must fit the image.
# Copy the repository with docker/wheelhouse to the offline machine and run docker/build.sh there.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(dirname "$here")
out="$here/wheelhouse"
PY=${PYTHON:-python3}
if ! "$PY" -c 'import sys; assert sys.version_info[:2] == (3, 11)'; then
    echo "use Python 3.11 (the image's version): PYTHON=/path/to/python3.11 $0" >&2
    exit 2
fi
mkdir -p "$out"
# With the dask extra: the image runs the node and, in compose's `dask` profile, the scheduler and workers.
"$PY" -m pip wheel --wheel-dir "$out" "$repo[dask]"
echo "wheelhouse ready: $out ($(ls "$out" | wc -l) files)"
