# shellcheck shell=bash
# Sourced by berth's deploy, test and bench scripts.
#
# `sudo` replaces PATH with its secure_path, which lacks the places where rustup and
# the Go release tarball put their tools, so look for them where they usually live:
# root's home, the invoking user's home, /usr/local/go.

berth_toolchain_path() {
    local candidates=(/usr/local/go/bin "$HOME/.cargo/bin" "$HOME/go/bin" /root/.cargo/bin /root/go/bin /usr/local/cargo/bin)
    local sudo_home dir cargo_path
    if [[ -n ${SUDO_USER:-} ]]; then
        sudo_home=$(getent passwd "$SUDO_USER" | cut -d: -f6)
        [[ -n $sudo_home ]] && candidates+=("$sudo_home/.cargo/bin" "$sudo_home/go/bin")
    fi
    for dir in "${candidates[@]}"; do
        if [[ -d $dir && ":$PATH:" != *":$dir:"* ]]; then
            PATH="$PATH:$dir"
        fi
    done
    export PATH
    # A rustup proxy finds its toolchains through RUSTUP_HOME, which defaults to the
    # caller's home: point it at the home the proxy was installed in.
    if [[ -z ${RUSTUP_HOME:-} ]] && cargo_path=$(command -v cargo); then
        case $cargo_path in
            */.cargo/bin/cargo)
                local install_home=${cargo_path%/.cargo/bin/cargo}
                if [[ -d $install_home/.rustup && $install_home != "$HOME" ]]; then
                    export RUSTUP_HOME="$install_home/.rustup"
                fi
                ;;
        esac
    fi
}

berth_toolchain_path
