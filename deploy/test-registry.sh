#!/usr/bin/env bash
# Serves berth's test images from a registry on 127.0.0.1, to try berthd on a machine
# without internet access. Runs in the foreground; Ctrl-C stops it and removes its data.
#
#   sudo deploy/test-registry.sh [PORT]     (default 5000)
#
# It serves docker.io/library/busybox:latest and :1.36, docker.io/library/busybox-extra:1.0,
# registry.k8s.io/pause:3.10 and gcr.io/berth-test/busybox:latest once berthd's mirrors
# point at it (the lines printed below, for /etc/berth/config.toml).
export BERTH_TESTS_SHARE_NETWORK=1
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../crictl-tests/lib.sh"

REGISTRY_PORT=${1:-5000}
[[ $REGISTRY_PORT =~ ^[0-9]+$ ]] || die "PORT must be a number, not '$REGISTRY_PORT'"
[[ $EUID -eq 0 ]] || die "must run as root (umoci keeps file ownership in the images)"
registry_start
build_test_images >/dev/null
push_test_images
cat <<CONFIG
Registry with berth's test images at http://$REGISTRY_ADDR (Ctrl-C stops it).
Add to /etc/berth/config.toml, then restart berthd:

[registry]
insecure = ["$REGISTRY_ADDR"]

[registry.mirrors]
"docker.io" = ["http://$REGISTRY_ADDR"]
"registry.k8s.io" = ["http://$REGISTRY_ADDR"]
"gcr.io" = ["http://$REGISTRY_ADDR"]
CONFIG
wait "$REGISTRY_PID"
