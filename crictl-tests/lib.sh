# shellcheck shell=bash
# Shared harness for the crictl scenarios and the pull benchmark.
#
# It starts the real parts a node has: a registry (Debian's docker-registry) on a free
# 127.0.0.1 port, test images built from Debian's busybox-static with umoci and pushed
# with skopeo, and the CRI daemon under test with temporary root, state and socket and
# registry mirrors that send docker.io, registry.k8s.io and gcr.io to that registry, as
# an air-gapped node is set up. The real crictl then drives the daemon.
#
# CRI_DAEMON=berth (default) runs ${BERTHD:-target/release/berthd};
# CRI_DAEMON=containerd runs Debian's containerd 1.6 with the same mirrors, so that the
# scenarios can be proven on a reference implementation.
#
# Everything started here is recorded and stopped by the EXIT trap; nothing else is.
#
# shellcheck disable=SC2034  # the variables set here are read by the files sourcing it

set -uo pipefail

# Tests reach nothing beyond 127.0.0.0/8. A daemon falls back from a mirror to the
# upstream registry when the mirror lacks an image (containerd does, and so may berthd),
# so each scenario file runs in a network namespace of its own whose only interface is
# loopback: a fallback fails at once instead of leaving the machine. (The registry of
# deploy/test-registry.sh serves the host and opts out with BERTH_TESTS_SHARE_NETWORK=1.)
if [[ ${BERTH_TESTS_SHARE_NETWORK:-0} != 1 && -z ${BERTH_TESTS_NETNS:-} ]]; then
    export BERTH_TESTS_NETNS=1
    # shellcheck disable=SC2016  # expanded by the inner shell
    exec unshare --net -- bash -c 'ip link set lo up && exec bash "$0" "$@"' "$0" "$@"
fi

BERTH_REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/env.sh
source "$BERTH_REPO/deploy/env.sh"

CRI_DAEMON=${CRI_DAEMON:-berth}
BERTHD=${BERTHD:-$BERTH_REPO/target/release/berthd}
CRICTL=${CRICTL:-$(command -v crictl || echo /usr/local/bin/crictl)}
# Built test images that take long to make (the large ones) are kept across runs here.
BERTH_IMAGE_CACHE=${BERTH_IMAGE_CACHE:-/var/tmp/berth-test-images}

WORKDIR=$(mktemp -d /tmp/crictl-tests.XXXXXX)
REGISTRY_ADDR=""
REGISTRY_PID=""
DAEMON_PID=""
DAEMON_ROOT=""
DAEMON_STATE=""
DAEMON_LOG=""
CRI_SOCKET=""
CRICTL_CONFIG=""
EXPECTED_RUNTIME_NAME=""
CONTENT_BLOBS_DIR=""
TEST_LAYOUT="$WORKDIR/images"

SCENARIO_PASSED=0
SCENARIO_FAILED=0
CHECKS_FAILED_IN_SCENARIO=0
SCENARIO_FILE=$(basename "$0")

log() { echo "  $*"; }
die() {
    echo "$SCENARIO_FILE: setup failed: $*" >&2
    exit 2
}

# ---------------------------------------------------------------- cleanup

cleanup() {
    local status=$?
    # A second signal (timeout(1) signals the whole process group) must not cut the
    # cleanup short.
    trap '' INT TERM
    daemon_stop quiet
    if [[ -n $REGISTRY_PID ]]; then
        kill "$REGISTRY_PID" 2>/dev/null
        wait "$REGISTRY_PID" 2>/dev/null
    fi
    # Unmount whatever the daemon left mounted under our directory (snapshots,
    # container rootfs), deepest first, before removing it.
    local mount_point
    findmnt -rn -o TARGET | grep -F "$WORKDIR/" | sort -r | while read -r mount_point; do
        umount -l "$mount_point" 2>/dev/null
    done
    if [[ ${KEEP_WORKDIR:-0} == 1 ]]; then
        echo "$SCENARIO_FILE: kept $WORKDIR"
    else
        rm -rf "$WORKDIR"
    fi
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# remove_run_pod_cgroups: the (empty) cgroups berthd left of the pods a scenario file
# recorded in WORKDIR/pod-ids, deepest first; for after the daemon has stopped.
remove_run_pod_cgroups() {
    local dir
    [[ -s $WORKDIR/pod-ids ]] || return 0
    find /sys/fs/cgroup -depth -mindepth 2 -type d -path '*/berth/*' 2>/dev/null |
        grep -F -f "$WORKDIR/pod-ids" | while read -r dir; do rmdir "$dir" 2>/dev/null; done
}

# ---------------------------------------------------------------- registry

free_port() {
    local port
    for _ in $(seq 1 50); do
        port=$((20000 + RANDOM % 40000))
        if [[ -z $(ss -Hltn "sport = :$port") ]]; then
            echo "$port"
            return 0
        fi
    done
    return 1
}

# registry_start: a docker-registry on 127.0.0.1, on REGISTRY_PORT if set or else on
# a free port, with storage in WORKDIR; sets REGISTRY_ADDR (host:port).
registry_start() {
    local storage="$WORKDIR/registry" config="$WORKDIR/registry.yml" port attempt
    mkdir -p "$storage"
    for attempt in 1 2 3; do
        port=${REGISTRY_PORT:-$(free_port)} || die "no free port found for the registry"
        cat >"$config" <<EOF
version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $storage
  delete:
    enabled: true
http:
  addr: 127.0.0.1:$port
EOF
        docker-registry serve "$config" >"$WORKDIR/registry.log" 2>&1 &
        REGISTRY_PID=$!
        for _ in $(seq 1 100); do
            if curl -fs -o /dev/null "http://127.0.0.1:$port/v2/"; then
                REGISTRY_ADDR="127.0.0.1:$port"
                return 0
            fi
            kill -0 "$REGISTRY_PID" 2>/dev/null || break
            sleep 0.1
        done
        kill "$REGISTRY_PID" 2>/dev/null
        wait "$REGISTRY_PID" 2>/dev/null
        REGISTRY_PID=""
        echo "registry on port $port did not come up (attempt $attempt):" >&2
        tail -5 "$WORKDIR/registry.log" >&2
    done
    die "registry did not start"
}

# push LAYOUT:TAG REPOSITORY:TAG  (repository as the registry names it, e.g. library/busybox)
push() {
    skopeo copy --quiet --dest-tls-verify=false "oci:$1" "docker://$REGISTRY_ADDR/$2" >/dev/null ||
        die "skopeo could not push $1 to $REGISTRY_ADDR/$2"
}

# manifest_digest REPOSITORY:TAG -> sha256:... of the manifest the registry serves
manifest_digest() {
    skopeo inspect --tls-verify=false "docker://$REGISTRY_ADDR/$1" | jq -r .Digest
}

# layer_digests REPOSITORY:TAG -> one sha256:... per line, base layer first
layer_digests() {
    skopeo inspect --tls-verify=false --raw "docker://$REGISTRY_ADDR/$1" | jq -r '.layers[].digest'
}

# compressed_size REPOSITORY:TAG -> bytes of config + layers as stored in the registry
compressed_size() {
    skopeo inspect --tls-verify=false --raw "docker://$REGISTRY_ADDR/$1" |
        jq '[.config.size] + [.layers[].size] | add'
}

# ---------------------------------------------------------------- test images

# populate_busybox_rootfs DIR: /bin/busybox with every applet linked where busybox
# installs it, and the passwd/group entries images usually carry.
populate_busybox_rootfs() {
    local rootfs=$1 applet
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,var/tmp}
    chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
    chmod 0700 "$rootfs/root"
    install -m 0755 /bin/busybox "$rootfs/bin/busybox"
    while read -r applet; do
        [[ $applet == bin/busybox || -e $rootfs/$applet ]] && continue
        ln -s /bin/busybox "$rootfs/$applet"
    done < <(/bin/busybox --list-full)
    cat >"$rootfs/etc/passwd" <<'EOF'
root:x:0:0:root:/root:/bin/sh
nobody:x:65534:65534:nobody:/nonexistent:/bin/false
EOF
    cat >"$rootfs/etc/group" <<'EOF'
root:x:0:
nogroup:x:65534:
EOF
}

# build_test_images: in TEST_LAYOUT (an OCI layout) the tags
#   busybox        one layer: busybox-static and its applets
#   busybox-extra  busybox's layer plus one more (shares the base layer)
#   pause          busybox with an entrypoint that sleeps until SIGTERM/SIGINT
build_test_images() {
    local bundle="$WORKDIR/bundle"
    umoci init --layout "$TEST_LAYOUT" || die "umoci init"
    umoci new --image "$TEST_LAYOUT:busybox" || die "umoci new"
    umoci unpack --image "$TEST_LAYOUT:busybox" "$bundle" >/dev/null || die "umoci unpack"
    populate_busybox_rootfs "$bundle/rootfs"
    umoci repack --refresh-bundle --image "$TEST_LAYOUT:busybox" "$bundle" || die "umoci repack busybox"
    umoci config --image "$TEST_LAYOUT:busybox" --config.cmd sh \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin || die "umoci config busybox"

    umoci tag --image "$TEST_LAYOUT:busybox" busybox-extra || die "umoci tag busybox-extra"
    rm -rf "$bundle"
    umoci unpack --image "$TEST_LAYOUT:busybox-extra" "$bundle" >/dev/null || die "umoci unpack busybox-extra"
    echo "berth test image with a second layer" >"$bundle/rootfs/etc/extra-layer"
    umoci repack --image "$TEST_LAYOUT:busybox-extra" "$bundle" || die "umoci repack busybox-extra"
    rm -rf "$bundle"

    umoci config --image "$TEST_LAYOUT:busybox" --tag pause \
        --config.entrypoint /bin/sh --config.entrypoint -c \
        --config.entrypoint "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done" \
        --clear config.cmd || die "umoci config pause"
}

# push_test_images: pushes the small test images under the names the mirrors serve:
# docker.io/library/busybox:{latest,1.36}, docker.io/library/busybox-extra:1.0,
# registry.k8s.io/pause:3.10 and gcr.io/berth-test/busybox:latest.
push_test_images() {
    push "$TEST_LAYOUT:busybox" library/busybox:latest
    push "$TEST_LAYOUT:busybox" library/busybox:1.36
    push "$TEST_LAYOUT:busybox-extra" library/busybox-extra:1.0
    push "$TEST_LAYOUT:pause" pause:3.10
    push "$TEST_LAYOUT:busybox" berth-test/busybox:latest
}

# random_layers_image LAYOUT TAG LAYERS MIB_PER_LAYER: an image of LAYERS layers, each
# one file of incompressible data, built once and kept in LAYOUT.
random_layers_image() {
    local layout=$1 tag=$2 layers=$3 mib=$4 bundle layer
    if [[ -f $layout/.complete-$tag ]]; then
        return 0
    fi
    rm -rf "$layout"
    mkdir -p "$(dirname "$layout")"
    bundle=$(mktemp -d "$(dirname "$layout")/bundle.XXXXXX")
    rmdir "$bundle"
    umoci init --layout "$layout" || die "umoci init $layout"
    umoci new --image "$layout:$tag" || die "umoci new $layout:$tag"
    umoci unpack --image "$layout:$tag" "$bundle" >/dev/null || die "umoci unpack $layout:$tag"
    for layer in $(seq 1 "$layers"); do
        head -c "$((mib * 1024 * 1024))" /dev/urandom >"$bundle/rootfs/data-$layer.bin"
        umoci repack --refresh-bundle --image "$layout:$tag" "$bundle" || die "umoci repack layer $layer"
    done
    rm -rf "$bundle"
    umoci gc --layout "$layout"
    touch "$layout/.complete-$tag"
}


# ---------------------------------------------------------------- the CRI daemon

# daemon_configure: chooses directories and writes the daemon's and crictl's config;
# a restarted daemon reuses them, as it would after a crash on a node.
daemon_configure() {
    local dir="$WORKDIR/$CRI_DAEMON" mirror="http://$REGISTRY_ADDR"
    DAEMON_ROOT="$dir/root"
    DAEMON_STATE="$dir/state"
    CRI_SOCKET="$dir/cri.sock"
    DAEMON_LOG="$dir/daemon.log"
    CRICTL_CONFIG="$WORKDIR/crictl.yaml"
    mkdir -p "$dir"
    case $CRI_DAEMON in
        berth)
            [[ -x $BERTHD ]] || die "berthd not found at $BERTHD (cargo build --release --bin berthd, or set BERTHD)"
            EXPECTED_RUNTIME_NAME=berth
            CONTENT_BLOBS_DIR="$DAEMON_ROOT/content/blobs/sha256"
            cat >"$dir/config.toml" <<END_OF_BERTH_CONFIG
root = "$DAEMON_ROOT"
state = "$DAEMON_STATE"
socket = "$CRI_SOCKET"
sandbox_image = "registry.k8s.io/pause:3.10"
max_concurrent_downloads = 3

[registry]
insecure = ["$REGISTRY_ADDR"]

[registry.mirrors]
"docker.io" = ["$mirror"]
"registry.k8s.io" = ["$mirror"]
"gcr.io" = ["$mirror"]

# The node's /etc/cni/net.d is not the tests' to write.
[cni]
conf_dir = "$dir/cni"
bin_dirs = ["/usr/lib/cni"]
END_OF_BERTH_CONFIG
            ;;
        containerd)
            command -v containerd >/dev/null || die "containerd not installed"
            EXPECTED_RUNTIME_NAME=containerd
            CONTENT_BLOBS_DIR="$DAEMON_ROOT/io.containerd.content.v1.content/blobs/sha256"
            mkdir -p "$dir/cni"
            cat >"$dir/config.toml" <<END_OF_CONTAINERD_CONFIG
version = 2
root = "$DAEMON_ROOT"
state = "$DAEMON_STATE"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "$CRI_SOCKET"
[ttrpc]
  address = "$CRI_SOCKET.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""

[plugins."io.containerd.internal.v1.opt"]
  path = "$dir/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  stream_server_address = "127.0.0.1"
  max_concurrent_downloads = 3
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "$dir/cni"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."docker.io"]
    endpoint = ["$mirror"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."registry.k8s.io"]
    endpoint = ["$mirror"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."gcr.io"]
    endpoint = ["$mirror"]
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."$REGISTRY_ADDR"]
    endpoint = ["$mirror"]
END_OF_CONTAINERD_CONFIG
            ;;
        *) die "CRI_DAEMON must be berth or containerd, not '$CRI_DAEMON'" ;;
    esac
    cat >"$CRICTL_CONFIG" <<END_OF_CRICTL_CONFIG
runtime-endpoint: unix://$CRI_SOCKET
image-endpoint: unix://$CRI_SOCKET
timeout: 30
END_OF_CRICTL_CONFIG
}

# cri ARGS...: the real crictl against the daemon under test.
cri() {
    timeout "${CRI_COMMAND_TIMEOUT:-300}" "$CRICTL" --config "$CRICTL_CONFIG" "$@"
}

daemon_running() {
    [[ -n $DAEMON_PID ]] && kill -0 "$DAEMON_PID" 2>/dev/null &&
        [[ $(ps -o stat= -p "$DAEMON_PID" 2>/dev/null) != Z* ]]
}

# daemon_start: starts the daemon (again, after a stop or a kill, on the same root and
# state) and waits until crictl gets an answer from it.
daemon_start() {
    [[ -n $CRICTL_CONFIG ]] || daemon_configure
    local config="$WORKDIR/$CRI_DAEMON/config.toml" deadline=$((SECONDS + 60))
    echo "---- started by $SCENARIO_FILE at $(date +%T.%N)" >>"$DAEMON_LOG"
    case $CRI_DAEMON in
        berth) "$BERTHD" --config "$config" --log-format text >>"$DAEMON_LOG" 2>&1 & ;;
        containerd) containerd --config "$config" >>"$DAEMON_LOG" 2>&1 & ;;
    esac
    DAEMON_PID=$!
    while ((SECONDS < deadline)); do
        if ! daemon_running; then
            wait "$DAEMON_PID" 2>/dev/null
            echo "$CRI_DAEMON exited with status $? while starting" >&2
            DAEMON_PID=""
            return 1
        fi
        if [[ -S $CRI_SOCKET ]] && cri version >/dev/null 2>&1; then
            return 0
        fi
        sleep 0.2
    done
    echo "$CRI_DAEMON did not answer crictl version within 60 s" >&2
    return 1
}

# daemon_stop [quiet]: SIGTERM, then SIGKILL after 20 s; returns the daemon's exit status.
daemon_stop() {
    if [[ -z $DAEMON_PID ]]; then
        return 0
    fi
    local pid=$DAEMON_PID status
    kill -TERM "$pid" 2>/dev/null
    for _ in $(seq 1 200); do
        daemon_running || break
        sleep 0.1
    done
    if daemon_running; then
        [[ ${1:-} == quiet ]] || echo "$CRI_DAEMON did not exit 20 s after SIGTERM; killing it" >&2
        kill -KILL "$pid"
    fi
    wait "$pid" 2>/dev/null
    status=$?
    DAEMON_PID=""
    return "$status"
}

daemon_kill9() {
    if [[ -n $DAEMON_PID ]]; then
        kill -KILL "$DAEMON_PID" 2>/dev/null
        wait "$DAEMON_PID" 2>/dev/null
        DAEMON_PID=""
    fi
}

# ---------------------------------------------------------------- assertions

pass_check() { echo "    ok - $1"; }

# fail_check DESCRIPTION [DETAIL...]
fail_check() {
    echo "    FAILED - $1"
    shift
    local detail
    for detail in "$@"; do
        [[ -n $detail ]] && printf '%s\n' "$detail" | head -20 | sed 's/^/        | /'
    done
    CHECKS_FAILED_IN_SCENARIO=$((CHECKS_FAILED_IN_SCENARIO + 1))
}

# check DESCRIPTION COMMAND...: passes when COMMAND exits 0. COMMAND runs in a
# subshell: what it changes in variables (DAEMON_PID…) is lost.
check() {
    local description=$1 output status
    shift
    output=$("$@" 2>&1)
    status=$?
    if ((status == 0)); then
        pass_check "$description"
    else
        fail_check "$description" "exit $status: $*" "$output"
    fi
}

# check_fails DESCRIPTION COMMAND...: passes when COMMAND exits non-zero.
check_fails() {
    local description=$1 output
    shift
    if output=$("$@" 2>&1); then
        fail_check "$description" "unexpectedly succeeded: $*" "$output"
    else
        pass_check "$description"
    fi
}

# check_eq DESCRIPTION EXPECTED ACTUAL
check_eq() {
    if [[ $3 == "$2" ]]; then
        pass_check "$1"
    else
        fail_check "$1" "expected: $2" "actual:   $3"
    fi
}

# check_match DESCRIPTION EXTENDED-REGEX TEXT: passes when a line of TEXT matches.
check_match() {
    if grep -Eq -- "$2" <<<"$3"; then
        pass_check "$1"
    else
        fail_check "$1" "no line matches /$2/ in:" "$3"
    fi
}

# check_no_match DESCRIPTION EXTENDED-REGEX TEXT: passes when no line of TEXT matches.
check_no_match() {
    if grep -Eq -- "$2" <<<"$3"; then
        fail_check "$1" "a line matches /$2/ in:" "$3"
    else
        pass_check "$1"
    fi
}

# ---------------------------------------------------------------- scenarios

record_result() {
    [[ -n ${CRICTL_TESTS_RESULTS:-} ]] && echo "$1 $SCENARIO_FILE: $2" >>"$CRICTL_TESTS_RESULTS"
    return 0
}

# scenario NAME FUNCTION: runs FUNCTION (in this shell) and reports PASS or FAIL.
# A daemon found dead beforehand (a crash during an earlier scenario) fails this one,
# and is started again so that the rest can run.
scenario() {
    local name=$1 function=$2 started=$SECONDS
    CHECKS_FAILED_IN_SCENARIO=0
    echo "== $name"
    if ! daemon_running; then
        if [[ -n $DAEMON_PID ]]; then
            fail_check "$CRI_DAEMON still running when the scenario begins" "it died during an earlier scenario"
            DAEMON_PID=""
        fi
        daemon_start || fail_check "$CRI_DAEMON starts"
    fi
    if daemon_running; then
        "$function"
    fi
    if ((CHECKS_FAILED_IN_SCENARIO == 0)); then
        SCENARIO_PASSED=$((SCENARIO_PASSED + 1))
        echo "PASS $SCENARIO_FILE: $name ($((SECONDS - started)) s)"
        record_result PASS "$name"
    else
        SCENARIO_FAILED=$((SCENARIO_FAILED + 1))
        echo "FAIL $SCENARIO_FILE: $name ($((SECONDS - started)) s)"
        record_result FAIL "$name"
        if [[ -f $DAEMON_LOG ]]; then
            echo "  last lines of the $CRI_DAEMON log:"
            tail -15 "$DAEMON_LOG" | cut -c1-300 | sed 's/^/        | /'
        fi
    fi
    return 0
}

# setup_registry_and_daemon: what every scenario file begins with.
setup_registry_and_daemon() {
    echo "$SCENARIO_FILE: daemon $CRI_DAEMON, $("$CRICTL" --version), work dir $WORKDIR"
    registry_start
    build_test_images >/dev/null
    push_test_images
    echo "$SCENARIO_FILE: registry at $REGISTRY_ADDR holds the test images"
    daemon_configure
    daemon_start || die "$CRI_DAEMON did not start; log: $(tail -20 "$DAEMON_LOG")"
}

# finish: the scenario file's closing line and exit status.
finish() {
    echo "$SCENARIO_FILE: $SCENARIO_PASSED passed, $SCENARIO_FAILED failed"
    ((SCENARIO_FAILED == 0))
}
