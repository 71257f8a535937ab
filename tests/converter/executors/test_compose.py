"""docker/compose.yaml's `dask` profile (issue 13): what the shared-path contract needs, read from the file.

No `docker compose` is installed on the test machines (the docker CLI has no compose plugin here), so
the file is checked as data: the node keeps running alone without the profile; the profile adds a
scheduler with allowed-failures 0 and workers from the node's image, one thread per worker, that
mount the inbox, serving and archive volumes at the node's paths and never its state; the
environment variables the node reads are the option table's names (config.options), so renaming a
setting breaks this test instead of the deployment.
"""

from __future__ import annotations

from pathlib import Path

import yaml

from config.options import BY_FIELD

COMPOSE = Path(__file__).resolve().parents[3] / "docker" / "compose.yaml"
DOCKERFILE = COMPOSE.parent / "Dockerfile"


def _mounts(service: dict) -> dict[str, str]:
    """Mount path -> volume name."""
    return {m.split(":")[1]: m.split(":")[0] for m in service.get("volumes", [])}


def test_the_dask_profile_runs_scheduler_and_workers_from_the_node_image_on_the_same_paths():
    data = yaml.safe_load(COMPOSE.read_text())
    services = data["services"]
    node, scheduler, worker = services["wsi-node"], services["dask-scheduler"], services["dask-worker"]
    assert "profiles" not in node  # `docker compose up` without the profile: the node alone, as before
    assert scheduler["profiles"] == ["dask"] and worker["profiles"] == ["dask"]
    assert scheduler["image"] == worker["image"] == node["image"]
    assert scheduler["environment"]["DASK_DISTRIBUTED__SCHEDULER__ALLOWED_FAILURES"] == "0"
    assert scheduler["command"][:2] == ["dask", "scheduler"] and "8786" in scheduler["command"]
    cmd = worker["command"]
    assert cmd[:3] == ["dask", "worker", "tcp://dask-scheduler:8786"]
    assert cmd[cmd.index("--nthreads") + 1] == "1"
    assert "--memory-limit" in cmd and cmd[cmd.index("--resources") + 1].startswith("memory=")
    for service in (scheduler, worker):
        assert service["restart"] == "unless-stopped"  # workers exit when their scheduler goes away
    node_mounts, worker_mounts = _mounts(node), _mounts(worker)
    shared = {"/data/inbox", "/data/serving", "/data/archive"}
    assert set(worker_mounts) == shared, worker_mounts  # never the node's state or quarantine
    assert {p: node_mounts[p] for p in shared} == worker_mounts
    env = node["environment"]
    for field in ("executor", "dask_scheduler", "max_concurrent"):
        assert BY_FIELD[field].env in env, (field, BY_FIELD[field].env)
    assert env[BY_FIELD["executor"].env] == "${WSI_NODE_EXECUTOR:-local}"
    assert env[BY_FIELD["dask_scheduler"].env] == "tcp://dask-scheduler:8786"
    assert set(data["volumes"]) == {"inbox", "serving", "archive", "quarantine", "state"}


def test_the_image_installs_the_dask_extra():
    text = DOCKERFILE.read_text()
    assert '"wsi-node[dask]==${WSI_NODE_VERSION}"' in text
    assert '"$repo[dask]"' in (COMPOSE.parent / "build-wheelhouse.sh").read_text()
