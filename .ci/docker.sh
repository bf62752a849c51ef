# Sourced by .ci/run: a private Docker engine for the Docker runtime tests.
#   ensure_docker_packages   install docker.io and busybox-static if missing
#   start_dockerd            start dockerd (or reuse a running one) and export DOCKER_HOST
#   stop_dockerd             stop it and remove everything it left behind
# All three are idempotent and safe under `set -euo pipefail`. The scratch dir is short on purpose: the socket path must
# stay under the 108-byte limit of unix socket names.

OPEVA_CI_DOCKER_DIR=${OPEVA_CI_DOCKER_DIR:-/tmp/opeva-ci-dk}
OPEVA_CI_APT_LOG=${OPEVA_CI_APT_LOG:-/tmp/opeva-ci-apt.log}

_docker_pkg_installed() {
    dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q 'install ok installed'
}

ensure_docker_packages() {
    # Check the package, not the binary: the plain (dynamic) busybox also installs
    # /bin/busybox, and it cannot run in the libc-less test image.
    if command -v dockerd >/dev/null && _docker_pkg_installed busybox-static; then
        return 0
    fi
    echo "installing docker.io busybox-static (log: $OPEVA_CI_APT_LOG)"
    {
        apt-get update -q &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends docker.io busybox-static
    } >>"$OPEVA_CI_APT_LOG" 2>&1 || {
        echo "apt-get failed; last lines of $OPEVA_CI_APT_LOG:" >&2
        tail -n 20 "$OPEVA_CI_APT_LOG" >&2
        return 1
    }
}

# True when the engine behind unix socket $1 answers /_ping (plain Python: no curl in CI).
_dockerd_ping() {
    python3 - "$1" 2>/dev/null <<'EOF'
import socket, sys
sock = socket.socket(socket.AF_UNIX)
sock.settimeout(1)
sock.connect(sys.argv[1])
sock.sendall(b"GET /_ping HTTP/1.0\r\nHost: docker\r\n\r\n")
sys.exit(0 if sock.recv(64).split(b"\r\n")[0].endswith(b" 200 OK") else 1)
EOF
}

start_dockerd() {
    local dir=$OPEVA_CI_DOCKER_DIR
    local sock=$dir/docker.sock
    if [ -S "$sock" ] && _dockerd_ping "$sock"; then
        export DOCKER_HOST=unix://$sock
        return 0
    fi
    mkdir -p "$dir"
    # --iptables=false --bridge=none: never touch the host's firewall or create a bridge.
    dockerd --host "unix://$sock" --data-root "$dir/docker" --exec-root "$dir/dx" \
        --pidfile "$dir/dockerd.pid" --iptables=false --bridge=none \
        >>"$dir/dockerd.log" 2>&1 &
    local i
    for i in $(seq 200); do
        if _dockerd_ping "$sock"; then
            export DOCKER_HOST=unix://$sock
            return 0
        fi
        sleep 0.1
    done
    echo "dockerd did not answer within 20 s; last lines of $dir/dockerd.log:" >&2
    tail -n 20 "$dir/dockerd.log" >&2
    return 1
}

stop_dockerd() {
    local dir=$OPEVA_CI_DOCKER_DIR
    local pid i mnt
    pid=$(cat "$dir/dockerd.pid" 2>/dev/null || true)
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        # Not necessarily our child (it may come from an earlier step), so poll instead of `wait`.
        # dockerd stops its containers first, which can take their stop timeout (10 s).
        for i in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
    fi
    # dockerd leaves mounts under its dirs (overlay, shm, netns); deepest first, or umount fails busy.
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" || echo "cannot unmount $mnt" >&2
        done
    rm -rf "$dir"
    if [ "${DOCKER_HOST:-}" = "unix://$dir/docker.sock" ]; then
        unset DOCKER_HOST
    fi
}
