#!/usr/bin/env bash
# Sourced by .ci/run (best effort): gives tests/docker/test_docker.py a Docker daemon and a local base image on a
# machine without registry access, the way ../shared/FIELD-NOTES.md describes: dockerd without iptables
# or bridge (containers use --network host), a Debian base made with debootstrap and `docker import`,
# and the offline wheelhouse. On any failure it prints why and the Docker test skips.
# Exports DOCKER_HOST and TEST_DOCKER_BASE_IMAGE when it succeeds.
_wsi_docker_setup() {
    local root=/var/tmp/wsi-node-docker
    command -v dockerd >/dev/null && command -v debootstrap >/dev/null || { echo "docker-test-env: dockerd/debootstrap not installed"; return 1; }
    mkdir -p "$root/data" "$root/exec"
    export DOCKER_HOST="unix://$root/docker.sock"
    if ! docker info >/dev/null 2>&1; then
        dockerd --iptables=false --bridge=none --ip-masq=false --data-root "$root/data" --exec-root "$root/exec" \
            -H "$DOCKER_HOST" --pidfile "$root/docker.pid" >"$root/dockerd.log" 2>&1 &
        for _ in $(seq 30); do docker info >/dev/null 2>&1 && break; sleep 1; done
        docker info >/dev/null 2>&1 || { echo "docker-test-env: dockerd did not start (see $root/dockerd.log)"; return 1; }
    fi
    if ! docker image inspect wsi-node-base:bookworm >/dev/null 2>&1; then
        rm -rf "$root/rootfs"
        debootstrap --variant=minbase --include=python3,python3-venv bookworm "$root/rootfs" >"$root/debootstrap.log" 2>&1 \
            || { echo "docker-test-env: debootstrap failed (see $root/debootstrap.log)"; return 1; }
        tar -C "$root/rootfs" -c . | docker import - wsi-node-base:bookworm >/dev/null || return 1
    fi
    bash docker/build-wheelhouse.sh >"$root/wheelhouse.log" 2>&1 || { echo "docker-test-env: wheelhouse failed (see $root/wheelhouse.log)"; return 1; }
    export TEST_DOCKER_BASE_IMAGE=wsi-node-base:bookworm
    echo "docker-test-env: daemon at $DOCKER_HOST, base image $TEST_DOCKER_BASE_IMAGE"
}
_wsi_docker_setup || unset DOCKER_HOST TEST_DOCKER_BASE_IMAGE
