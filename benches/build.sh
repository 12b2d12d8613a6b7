#!/usr/bin/env bash
# Build benchmark: `berth build` of a fixed Dockerfile (FROM busybox, two RUNs, a
# COPY of a 2 MB context, ENV, WORKDIR, USER, CMD), cold (empty build cache, base
# image present) and then fully cached; where buildah is installed, the same
# Dockerfile with `buildah bud --layers` (runtime runc) and the ratios.
#
#   sudo benches/build.sh              # 3 runs each, medians
#   sudo RUNS=5 benches/build.sh
#
# The base image comes from a registry on 127.0.0.1 for both builders. Not part of
# test.sh: timings are reported, never asserted.
# shellcheck source=crictl-tests/lib.sh
source "$(dirname "${BASH_SOURCE[0]}")/../crictl-tests/lib.sh"

RUNS=${RUNS:-3}
BERTH=${BERTH:-$(dirname "$BERTHD")/berth}

[[ $EUID -eq 0 ]] || die "must run as root"

median() {
    sort -n | awk '{v[NR] = $1} END {if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2}'
}

calc() {
    awk "BEGIN {print $1}"
}

# timed COMMAND...: runs COMMAND quietly (dying on failure); sets SECONDS_TAKEN.
timed() {
    local started finished out
    started=$(date +%s.%N)
    out=$("$@" 2>&1) || die "$* failed: $(tail -20 <<<"$out")"
    finished=$(date +%s.%N)
    SECONDS_TAKEN=$(calc "$finished - $started")
}

berth() {
    "$BERTH" --socket "$CRI_SOCKET" "$@"
}

setup_registry_and_daemon
BASE="$REGISTRY_ADDR/library/busybox:latest"
CONTEXT="$WORKDIR/bench-context"
mkdir -p "$CONTEXT"
head -c $((2 * 1024 * 1024)) /dev/urandom >"$CONTEXT/payload.bin"
cat >"$CONTEXT/Dockerfile" <<END_OF_DOCKERFILE
FROM $BASE
RUN mkdir -p /app/data && echo "first run" > /app/data/first
RUN adduser_line="app:x:1000:1000::/app:/bin/sh" && echo "\$adduser_line" >> /etc/passwd && echo "app:x:1000:" >> /etc/group
COPY payload.bin /app/payload.bin
ENV APP_MODE=bench
WORKDIR /app
USER app
CMD ["sh", "-c", "ls -l /app"]
END_OF_DOCKERFILE
cri pull "$BASE" >/dev/null || die "pulling $BASE"
printf 'build.sh: %s, a 2 MiB context, %d runs each, %s cores, berthd %s\n' "$BASE" "$RUNS" "$(nproc)" "$BERTHD"

cold=() cached=()
for run in $(seq 1 "$RUNS"); do
    berth builder prune >/dev/null || die "berth builder prune"
    berth rmi bench:latest >/dev/null 2>&1
    timed berth build -t bench:latest "$CONTEXT"
    cold+=("$SECONDS_TAKEN")
    timed berth build -t bench:latest "$CONTEXT"
    cached+=("$SECONDS_TAKEN")
    printf '  berth   run %d: cold %6.3f s  cached %6.3f s\n' "$run" "${cold[-1]}" "${cached[-1]}"
done
berth_cold=$(printf '%s\n' "${cold[@]}" | median)
berth_cached=$(printf '%s\n' "${cached[@]}" | median)
printf '  berth   median: cold %6.3f s  cached %6.3f s\n' "$berth_cold" "$berth_cached"
# The issue's target for a fully cached rebuild: under 0.1 s.
if awk "BEGIN {exit !($berth_cached < 0.1)}"; then verdict=met; else verdict=MISSED; fi
echo "build.sh: target: fully cached rebuild under 0.1 s: $verdict"

if ! command -v buildah >/dev/null; then
    echo "build.sh: buildah not installed (Debian package buildah); no comparison"
    exit 0
fi
storage="$WORKDIR/buildah"
buildah_cmd() {
    buildah --root "$storage/root" --runroot "$storage/run" --storage-driver overlay "$@"
}
buildah_cmd pull --tls-verify=false "$BASE" >/dev/null || die "buildah pull $BASE"
cold=() cached=()
for run in $(seq 1 "$RUNS"); do
    buildah_cmd rmi -a -f >/dev/null 2>&1
    buildah_cmd pull --tls-verify=false "$BASE" >/dev/null
    timed buildah_cmd bud --layers --runtime runc --tls-verify=false -t bench:latest "$CONTEXT"
    cold+=("$SECONDS_TAKEN")
    timed buildah_cmd bud --layers --runtime runc --tls-verify=false -t bench:latest "$CONTEXT"
    cached+=("$SECONDS_TAKEN")
    printf '  buildah run %d: cold %6.3f s  cached %6.3f s\n' "$run" "${cold[-1]}" "${cached[-1]}"
done
buildah_cold=$(printf '%s\n' "${cold[@]}" | median)
buildah_cached=$(printf '%s\n' "${cached[@]}" | median)
printf '  buildah median: cold %6.3f s  cached %6.3f s\n' "$buildah_cold" "$buildah_cached"
printf 'build.sh: berth/buildah time ratio: cold %.2f, cached %.2f (below 1: berth is faster)\n' \
    "$(calc "$berth_cold / $buildah_cold")" "$(calc "$berth_cached / $buildah_cached")"
# The issue's target for a cold build: at most half of buildah's time.
if awk "BEGIN {exit !($berth_cold <= 0.5 * $buildah_cold)}"; then verdict=met; else verdict=MISSED; fi
echo "build.sh: target: cold build at most half of buildah's: $verdict"
buildah_cmd rmi -a -f >/dev/null 2>&1
findmnt -rn -o TARGET | grep -F "$storage" | sort -r | xargs -r umount -l
