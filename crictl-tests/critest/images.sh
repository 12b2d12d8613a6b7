# shellcheck shell=bash
# Stand-ins for the images critest (cri-tools v1.36.0, pkg/validate) pulls, built from
# Debian's busybox with umoci into lib.sh's TEST_LAYOUT and pushed to lib.sh's
# registry under the upstream repository names; the daemon reaches them through its
# mirrors for registry.k8s.io, k8s.gcr.io and gcr.io.
#
#   registry.k8s.io/e2e-test-images/busybox:1.29-2   Debian's dynamic busybox (its shell
#       runs /bin/ls, not an applet of its own, as the MaskedPaths test expects; the static
#       build does the opposite) and its libraries, applets as hard links (a masked
#       symlink would mask busybox itself), the upstream passwd/group (nobody,
#       www-data…), pgrep and ipcs as small scripts
#   registry.k8s.io/e2e-test-images/nginx:1.14-2     nginx-standin.c: pidof nginx, "master
#       process" in its cmdline, /var/run/nginx.pid; busybox httpd serves port 80
#   gcr.io/k8s-staging-cri-tools/hostnet-nginx-ARCH  the same on port 12003
#   registry.k8s.io/e2e-test-images/httpd:2.4.39-4   logs a line naming httpd, serves port 80
#   registry.k8s.io/e2e-test-images/nonewprivs:1.3   nonewprivs-standin.c, setuid root:
#       prints "Effective uid: N"
#   gcr.io/k8s-staging-cri-tools/test-image-user-{uid,username,uid-group,username-group}
#       USER 1002, www-data, 1003:1004, www-data:1004
#   gcr.io/k8s-staging-cri-tools/test-image-predefined-group   default-user (1000) also in
#       group-defined-in-image (50000); USER 1000
#   gcr.io/k8s-staging-cri-tools/test-image-{latest,1,2,3}:latest   each its own image (a
#       marker file); test-image-tag:{test,all} one image, test-image-tags:{1,2,3} another
#   registry.k8s.io/pause:3.10   pause-standin.c alone, the sandbox image (unlike lib.sh's
#       shell loop it starts no sleep that critest's pgrep would see in a pod); pause:3.9
#       (also as k8s.gcr.io/pause:3.9) the same with another config, so another image
#
# Not reproducible: gcr.io/k8s-staging-cri-tools/test-image-digest@sha256:9700f9a2…, a
# digest only the upstream build has; see expected-failures.txt.

CRITEST_HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# Debian's dynamic busybox, as deploy/install-deps.sh unpacks it.
CRITEST_BUSYBOX=${CRITEST_BUSYBOX:-/var/cache/berth-tests/busybox-dynamic/busybox}
CRITEST_E2E=e2e-test-images
CRITEST_STAGING=k8s-staging-cri-tools

# critest_layer FROM TO FUNCTION: image TO is FROM (an empty image when FROM is "")
# plus one layer holding what FUNCTION (called with the unpacked rootfs) changes.
critest_layer() {
    local from=$1 to=$2 change=$3 bundle="$WORKDIR/bundle-$2"
    if [[ -z $from ]]; then
        umoci new --image "$TEST_LAYOUT:$to" || die "umoci new $to"
    else
        umoci tag --image "$TEST_LAYOUT:$from" "$to" || die "umoci tag $to"
    fi
    umoci unpack --image "$TEST_LAYOUT:$to" "$bundle" >/dev/null || die "umoci unpack $to"
    "$change" "$bundle/rootfs" || die "building the layer of $to"
    umoci repack --image "$TEST_LAYOUT:$to" "$bundle" || die "umoci repack $to"
    rm -rf "$bundle"
}

# critest_config IMAGE NEW_TAG UMOCI_CONFIG_ARGS...: NEW_TAG is IMAGE with changed config.
critest_config() {
    local image=$1 tag=$2
    shift 2
    umoci config --image "$TEST_LAYOUT:$image" --tag "$tag" "$@" || die "umoci config $tag"
}

critest_busybox_rootfs() {
    local rootfs=$1 applet library
    [[ -x $CRITEST_BUSYBOX ]] || die "no dynamic busybox at $CRITEST_BUSYBOX (deploy/install-deps.sh unpacks it)"
    mkdir -p "$rootfs"/{bin,sbin,usr/bin,usr/sbin,etc,root,tmp,proc,sys,dev,var/tmp,var/run,home}
    chmod 1777 "$rootfs/tmp" "$rootfs/var/tmp"
    chmod 0700 "$rootfs/root"
    install -m 0755 "$CRITEST_BUSYBOX" "$rootfs/bin/busybox"
    # The host's loader and the libraries busybox links, where the loader looks.
    while read -r library; do
        install -D -m 0755 "$library" "$rootfs$library"
    done < <(ldd "$CRITEST_BUSYBOX" | grep -o '/[^ ]*')
    while read -r applet; do
        [[ $applet == bin/busybox || -e $rootfs/$applet ]] && continue
        ln "$rootfs/bin/busybox" "$rootfs/$applet"
    done < <("$CRITEST_BUSYBOX" --list-full)
    # Debian's busybox leaves out pgrep and ipcs, which critest runs in the image.
    cat >"$rootfs/usr/bin/pgrep" <<'END'
#!/bin/sh
# pgrep PATTERN: the pids of the processes whose name matches PATTERN (extended regex).
found=1
for dir in /proc/[0-9]*; do
    read -r name <"$dir/comm" 2>/dev/null || continue
    if echo "$name" | grep -Eq -- "$1"; then
        echo "${dir#/proc/}"
        found=0
    fi
done
exit $found
END
    cat >"$rootfs/usr/bin/ipcs" <<'END'
#!/bin/sh
# ipcs [-m]: the shared memory segments of this IPC namespace, as the kernel lists them.
cat /proc/sysvipc/shm
END
    chmod 0755 "$rootfs/usr/bin/pgrep" "$rootfs/usr/bin/ipcs"
    cat >"$rootfs/etc/passwd" <<'END'
root:x:0:0:root:/root:/bin/sh
daemon:x:1:1:daemon:/usr/sbin:/bin/false
bin:x:2:2:bin:/bin:/bin/false
sys:x:3:3:sys:/dev:/bin/false
sync:x:4:100:sync:/bin:/bin/sync
mail:x:8:8:mail:/var/spool/mail:/bin/false
www-data:x:33:33:www-data:/var/www:/bin/false
operator:x:37:37:Operator:/var:/bin/false
nobody:x:65534:65534:nobody:/home:/bin/false
END
    cat >"$rootfs/etc/group" <<'END'
root:x:0:
daemon:x:1:
bin:x:2:
sys:x:3:
adm:x:4:
tty:x:5:
disk:x:6:
wheel:x:10:root
mail:x:12:
www-data:x:33:
users:x:100:
nogroup:x:65534:
END
}

# Built with the host's C compiler, statically: the images carry no libc.
critest_compile() {
    gcc -static -Os -o "$2" "$CRITEST_HERE/$1" || die "gcc $1"
}

critest_pause_rootfs() {
    critest_compile pause-standin.c "$1/pause"
}

critest_nginx_rootfs() {
    critest_compile nginx-standin.c "$1/usr/sbin/nginx"
    mkdir -p "$1/usr/share/nginx/html"
    echo "<html><body>nginx stand-in for critest</body></html>" >"$1/usr/share/nginx/html/index.html"
}

critest_httpd_rootfs() {
    mkdir -p "$1/usr/local/apache2/htdocs"
    echo "<html><body>httpd stand-in for critest</body></html>" >"$1/usr/local/apache2/htdocs/index.html"
}

critest_nonewprivs_rootfs() {
    mkdir -p "$1/usr/local/bin"
    critest_compile nonewprivs-standin.c "$1/usr/local/bin/nnp"
    chown 0:0 "$1/usr/local/bin/nnp"
    chmod 4755 "$1/usr/local/bin/nnp"
}

critest_predefined_group_rootfs() {
    echo "default-user:x:1000:1000::/home/default-user:/bin/sh" >>"$1/etc/passwd"
    printf '%s\n' "default-user:x:1000:" "group-defined-in-image:x:50000:default-user" >>"$1/etc/group"
    mkdir -p "$1/home/default-user"
    chown 1000:1000 "$1/home/default-user"
}

# build_critest_images: every stand-in above in TEST_LAYOUT.
build_critest_images() {
    local name
    umoci init --layout "$TEST_LAYOUT" || die "umoci init"
    critest_layer "" critest-pause critest_pause_rootfs
    critest_config critest-pause critest-pause --config.entrypoint /pause
    # Another version is another image: were 3.9 and 3.10 one image, the test that
    # removes pause:3.9 by one of its two names would find a third.
    critest_config critest-pause critest-pause-3.9 --config.label io.berth.critest.pause-version=3.9

    critest_layer "" critest-busybox critest_busybox_rootfs
    critest_config critest-busybox critest-busybox --config.cmd sh \
        --config.env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin

    critest_layer critest-busybox critest-nginx critest_nginx_rootfs
    critest_config critest-nginx critest-nginx --config.entrypoint /usr/sbin/nginx --config.cmd 80 \
        --config.exposedports 80/tcp
    critest_config critest-nginx critest-hostnet-nginx --config.cmd 12003 --config.exposedports 12003/tcp

    critest_layer critest-busybox critest-httpd critest_httpd_rootfs
    critest_config critest-httpd critest-httpd --config.entrypoint /bin/sh --config.entrypoint -c \
        --config.entrypoint 'echo "httpd stand-in: serving /usr/local/apache2/htdocs on port 80"; exec httpd -f -p 80 -h /usr/local/apache2/htdocs' \
        --clear config.cmd --config.exposedports 80/tcp

    critest_layer critest-busybox critest-nonewprivs critest_nonewprivs_rootfs
    critest_config critest-nonewprivs critest-nonewprivs --config.entrypoint /usr/local/bin/nnp --clear config.cmd

    critest_config critest-busybox critest-user-uid --config.user 1002
    critest_config critest-busybox critest-user-username --config.user www-data
    critest_config critest-busybox critest-user-uid-group --config.user 1003:1004
    critest_config critest-busybox critest-user-username-group --config.user www-data:1004

    critest_layer critest-busybox critest-predefined-group critest_predefined_group_rootfs
    critest_config critest-predefined-group critest-predefined-group --config.user 1000

    for name in test-image-latest test-image-1 test-image-2 test-image-3 test-image-tag test-image-tags; do
        # shellcheck disable=SC2317  # called through critest_layer
        critest_marker() { touch "$1/$name"; }
        critest_layer critest-busybox "critest-$name" critest_marker
    done
}

# push_critest_images: the stand-ins under the repository names critest pulls.
push_critest_images() {
    local arch name tag
    arch=$(dpkg --print-architecture)
    push "$TEST_LAYOUT:critest-pause" pause:3.10
    push "$TEST_LAYOUT:critest-pause-3.9" pause:3.9
    push "$TEST_LAYOUT:critest-busybox" "$CRITEST_E2E/busybox:1.29-2"
    push "$TEST_LAYOUT:critest-nginx" "$CRITEST_E2E/nginx:1.14-2"
    push "$TEST_LAYOUT:critest-httpd" "$CRITEST_E2E/httpd:2.4.39-4"
    push "$TEST_LAYOUT:critest-nonewprivs" "$CRITEST_E2E/nonewprivs:1.3"
    push "$TEST_LAYOUT:critest-hostnet-nginx" "$CRITEST_STAGING/hostnet-nginx-$arch:latest"
    for name in uid username uid-group username-group; do
        push "$TEST_LAYOUT:critest-user-$name" "$CRITEST_STAGING/test-image-user-$name:latest"
    done
    push "$TEST_LAYOUT:critest-predefined-group" "$CRITEST_STAGING/test-image-predefined-group:latest"
    for name in test-image-latest test-image-1 test-image-2 test-image-3; do
        push "$TEST_LAYOUT:critest-$name" "$CRITEST_STAGING/$name:latest"
    done
    for tag in test all; do
        push "$TEST_LAYOUT:critest-test-image-tag" "$CRITEST_STAGING/test-image-tag:$tag"
    done
    for tag in 1 2 3; do
        push "$TEST_LAYOUT:critest-test-image-tags" "$CRITEST_STAGING/test-image-tags:$tag"
    done
}
