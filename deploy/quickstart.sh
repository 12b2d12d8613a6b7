#!/usr/bin/env bash
# Builds berth and runs berthd on this machine: `sudo deploy/quickstart.sh` on Debian.
#
# Installs the dependencies, builds the release binaries, installs them to
# /usr/local/bin, installs /etc/berth/config.toml if there is none, and (re)starts
# berthd: as a systemd service where systemd runs the machine, otherwise in the
# background with its log in /var/log/berthd.log. Safe to run again: it rebuilds,
# reinstalls and restarts.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
socket=/run/berth/berth.sock
pid_file=/run/berthd.pid
log_file=/var/log/berthd.log

say() { echo "quickstart: $*"; }
die() { echo "quickstart: $*" >&2; exit 1; }

[[ $EUID -eq 0 ]] || die "must run as root (sudo $0)"

"$repo/deploy/install-deps.sh"
# shellcheck source=deploy/env.sh
source "$repo/deploy/env.sh"

say "building (cargo build --release)"
(cd "$repo" && cargo build --release)

for binary in berthd berth berth-shim; do
    if [[ -x $repo/target/release/$binary ]]; then
        install -m 0755 "$repo/target/release/$binary" "/usr/local/bin/$binary.new"
        # Renaming over the old binary keeps a running copy's file intact.
        mv -f "/usr/local/bin/$binary.new" "/usr/local/bin/$binary"
        say "installed /usr/local/bin/$binary"
    fi
done

install -d -m 0755 /etc/berth
if [[ -e /etc/berth/config.toml ]]; then
    say "keeping the existing /etc/berth/config.toml"
else
    install -m 0644 "$repo/deploy/config.toml" /etc/berth/config.toml
    say "installed /etc/berth/config.toml (all defaults)"
fi
if [[ ! -e /etc/crictl.yaml ]]; then
    printf 'runtime-endpoint: unix://%s\nimage-endpoint: unix://%s\ntimeout: 30\n' "$socket" "$socket" >/etc/crictl.yaml
    say "installed /etc/crictl.yaml pointing crictl at berthd"
fi

# The background berthd that an earlier run of this script started, if still running.
background_berthd() {
    local pid
    [[ -f $pid_file ]] || return 1
    pid=$(<"$pid_file")
    [[ $pid =~ ^[0-9]+$ ]] && [[ $(readlink "/proc/$pid/exe" 2>/dev/null) == /usr/local/bin/berthd* ]] || return 1
    echo "$pid"
}

if [[ -d /run/systemd/system ]]; then
    install -m 0644 "$repo/deploy/berthd.service" /etc/systemd/system/berthd.service
    systemctl daemon-reload
    systemctl enable berthd.service >/dev/null 2>&1
    systemctl restart berthd.service
    say "berthd runs as systemd service berthd.service (journalctl -u berthd)"
    how_to_see_log="journalctl -u berthd"
else
    if pid=$(background_berthd); then
        say "stopping the running berthd (pid $pid)"
        kill -TERM "$pid"
        for _ in $(seq 1 100); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -0 "$pid" 2>/dev/null && die "berthd (pid $pid) did not stop within 10 s of SIGTERM"
    fi
    nohup /usr/local/bin/berthd >>"$log_file" 2>&1 </dev/null &
    echo $! >"$pid_file"
    say "berthd runs in the background, pid $(<"$pid_file"), log $log_file (no systemd here)"
    how_to_see_log="tail $log_file"
fi

for _ in $(seq 1 60); do
    if [[ -f $pid_file && ! -d /run/systemd/system ]] && ! kill -0 "$(<"$pid_file")" 2>/dev/null; then
        tail -20 "$log_file" >&2
        die "berthd exited; its log is above"
    fi
    if crictl --runtime-endpoint "unix://$socket" --image-endpoint "unix://$socket" version >/dev/null 2>&1; then
        crictl --runtime-endpoint "unix://$socket" version
        cat <<USAGE

berthd is serving CRI v1 on $socket. Try:

  crictl pull busybox
  crictl images
  crictl inspecti busybox

/etc/crictl.yaml points crictl at berthd; elsewhere pass
--runtime-endpoint unix://$socket or set CONTAINER_RUNTIME_ENDPOINT=unix://$socket.
Configuration: /etc/berth/config.toml. Log: $how_to_see_log.
USAGE
        exit 0
    fi
    sleep 0.5
done
die "berthd did not answer on $socket within 30 s; see $how_to_see_log"
