#!/usr/bin/env bash
# Installs what berth needs to build and what its tests and benchmarks drive.
# Idempotent: packages already present are left alone, and apt's lists are refreshed
# only when something has to be installed.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# shellcheck source=deploy/env.sh
source "$repo/deploy/env.sh"

crictl_version=v1.36.0
crictl_bin=/usr/local/bin/crictl
critest_bin=/usr/local/bin/critest
# crictl-tests/critest/images.sh reads it from here.
critest_busybox=/var/cache/berth-tests/busybox-dynamic/busybox

die() { echo "install-deps: $*" >&2; exit 1; }
say() { echo "install-deps: $*"; }

[[ $EUID -eq 0 ]] || die "must run as root (sudo $0)"
command -v apt-get >/dev/null || die "apt-get not found: berth's scripts target Debian and its derivatives"

packages=(
    runc containernetworking-plugins iproute2 iptables   # what pods run on
    docker-registry skopeo umoci busybox-static          # test registry and test images
    protobuf-compiler pkg-config build-essential         # k8s-cri's build script runs protoc
    apache2-utils                                        # htpasswd, for registry auth tests
    jq curl ca-certificates util-linux procps
)
missing=()
for package in "${packages[@]}"; do
    if ! dpkg-query -W -f='${Status}' "$package" 2>/dev/null | grep -q 'install ok installed'; then
        missing+=("$package")
    fi
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
else
    say "Debian packages already installed"
fi

# Rust is not fetched from the internet here: the machines that build berth have it.
if ! command -v cargo >/dev/null; then
    die "cargo not found in PATH or in ~/.cargo/bin: install a Rust toolchain (rustup) first, then rerun"
fi
required_rust=$(sed -n 's/^rust-version *= *"\(.*\)"/\1/p' "$repo/Cargo.toml")
installed_rust=$(rustc --version | awk '{print $2}')
if [[ -n $required_rust ]] && [[ $(printf '%s\n%s\n' "$required_rust" "$installed_rust" | sort -V | head -1) != "$required_rust" ]]; then
    die "rustc $installed_rust is older than the rust-version $required_rust that Cargo.toml requires"
fi
say "using $(cargo --version)"

installed_crictl=$("$crictl_bin" --version 2>/dev/null | awk '{print $3}' || true)
if [[ $installed_crictl == "$crictl_version" ]]; then
    say "crictl $crictl_version already installed"
else
    command -v go >/dev/null || die "go not found: crictl $crictl_version is built from source with the Go toolchain"
    say "building crictl $crictl_version"
    build_dir=$(mktemp -d /tmp/berth-crictl.XXXXXX)
    trap 'rm -rf "$build_dir"' EXIT
    # `go install module@version` also asks the proxy for the module's version list to
    # look for deprecations, which some proxies refuse; downloading the one version and
    # building it as its own main module needs only that version.
    module_dir=$(cd "$build_dir" && go mod download -json "sigs.k8s.io/cri-tools@$crictl_version" | jq -r .Dir)
    [[ -d $module_dir ]] || die "go mod download of sigs.k8s.io/cri-tools@$crictl_version gave no source directory"
    cp -r "$module_dir" "$build_dir/src"
    chmod -R u+w "$build_dir/src"
    (cd "$build_dir/src" && go build -trimpath -buildvcs=false \
        -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" \
        -o "$build_dir/crictl" ./cmd/crictl)
    install -m 0755 "$build_dir/crictl" "$crictl_bin"
    say "installed $("$crictl_bin" --version)"
fi

# critest is the CRI validation suite of the same module, compiled as a Go test binary.
installed_critest=$("$critest_bin" --version 2>/dev/null | sed -n 's/^critest version: //p' || true)
if [[ $installed_critest == "$crictl_version" ]]; then
    say "critest $crictl_version already installed"
else
    command -v go >/dev/null || die "go not found: critest $crictl_version is built from source with the Go toolchain"
    say "building critest $crictl_version"
    critest_dir=$(mktemp -d /tmp/berth-critest.XXXXXX)
    module_dir=$(cd "$critest_dir" && go mod download -json "sigs.k8s.io/cri-tools@$crictl_version" | jq -r .Dir)
    [[ -d $module_dir ]] || die "go mod download of sigs.k8s.io/cri-tools@$crictl_version gave no source directory"
    cp -r "$module_dir" "$critest_dir/src"
    chmod -R u+w "$critest_dir/src"
    (cd "$critest_dir/src" && go test -c -trimpath -buildvcs=false \
        -ldflags "-X sigs.k8s.io/cri-tools/pkg/version.Version=$crictl_version" \
        -o "$critest_dir/critest" ./cmd/critest)
    install -m 0755 "$critest_dir/critest" "$critest_bin"
    rm -rf "$critest_dir"
    say "installed critest $("$critest_bin" --version 2>/dev/null | sed -n 's/^critest version: //p')"
fi

# critest's busybox stand-in needs a shell that runs commands from PATH; Debian's
# busybox-static runs its own applets first. The dynamic build conflicts with
# busybox-static as a package, so it is unpacked beside it, not installed.
if [[ -x $critest_busybox ]]; then
    say "dynamic busybox for critest's images already unpacked"
else
    say "fetching Debian's dynamic busybox for critest's images"
    busybox_dir=$(mktemp -d /tmp/berth-busybox.XXXXXX)
    # apt runs the download as root here (its _apt user cannot write the temp dir).
    if ! (cd "$busybox_dir" && apt-get download -qq busybox 2>/dev/null); then
        apt-get update -qq
        (cd "$busybox_dir" && apt-get download -qq busybox 2>/dev/null) || die "apt-get download busybox failed"
    fi
    dpkg-deb -x "$busybox_dir"/busybox_*.deb "$busybox_dir/unpacked"
    install -D -m 0755 "$busybox_dir/unpacked/bin/busybox" "$critest_busybox"
    rm -rf "$busybox_dir"
fi
