# Sourced by .ci/run: a private Docker engine for the Docker runtime tests.
#   ensure_docker_packages   install docker.io and busybox-static if missing (under the apt lock)
#   start_dockerd            start this run's own dockerd (or reuse the one given) and export DOCKER_HOST
#   stop_dockerd             stop the engine this run started and remove its scratch dir; an engine
#                            it reused is left alone
# All three are idempotent and safe under `set -euo pipefail`. Needs .ci/locks.sh and .ci/apt.sh.
#
# By default each run starts its own engine in a fresh `mktemp -d` dir, so two runs on one machine
# never share (or stop) each other's engine. To reuse a running engine, set OPEVA_CI_DOCKER_DIR to
# the dir holding its docker.sock. The dir is short on purpose: the socket path must stay under the
# 108-byte limit of unix socket names.

_OPEVA_CI_DOCKER_STARTED=""   # the scratch dir of the engine this run started, once it has
_OPEVA_CI_DOCKERD_PID=""       # and that engine's pid (our child)

ensure_docker_packages() {
    # Check the package, not the binary: the plain (dynamic) busybox also installs
    # /bin/busybox, and it cannot run in the libc-less test image.
    if command -v dockerd >/dev/null && ci_pkg_installed busybox-static; then
        return 0
    fi
    ci_apt_install docker.io busybox-static
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
    if [ -n "$_OPEVA_CI_DOCKER_STARTED" ]; then
        return 0
    fi
    if [ -n "${OPEVA_CI_DOCKER_DIR:-}" ]; then
        local given=$OPEVA_CI_DOCKER_DIR/docker.sock
        if [ -S "$given" ] && _dockerd_ping "$given"; then
            export DOCKER_HOST=unix://$given
            echo "reusing the Docker engine at $given (left running at exit)"
            return 0
        fi
        echo "OPEVA_CI_DOCKER_DIR=$OPEVA_CI_DOCKER_DIR has no engine answering on docker.sock" >&2
        return 1
    fi
    local dir
    dir=$(mktemp -d /tmp/opeva-dk.XXXXXX)
    _OPEVA_CI_DOCKER_STARTED=$dir   # from here on stop_dockerd cleans it up, whatever happens next
    local sock=$dir/docker.sock
    # --iptables=false --bridge=none: never touch the host's firewall or create a bridge.
    dockerd --host "unix://$sock" --data-root "$dir/docker" --exec-root "$dir/dx" \
        --pidfile "$dir/dockerd.pid" --iptables=false --bridge=none \
        >>"$dir/dockerd.log" 2>&1 &
    _OPEVA_CI_DOCKERD_PID=$!
    local i
    for i in $(seq 200); do
        if _dockerd_ping "$sock"; then
            export DOCKER_HOST=unix://$sock
            echo "started a Docker engine at $sock"
            return 0
        fi
        sleep 0.1
    done
    echo "dockerd did not answer within 20 s; last lines of $dir/dockerd.log:" >&2
    tail -n 20 "$dir/dockerd.log" >&2
    return 1
}

stop_dockerd() {
    local dir=$_OPEVA_CI_DOCKER_STARTED
    if [ -z "$dir" ]; then
        return 0   # this run started no engine: one it reused is not its to stop
    fi
    local pid=$_OPEVA_CI_DOCKERD_PID i mnt
    if [ -n "$pid" ] && kill "$pid" 2>/dev/null; then
        # dockerd stops its containers first, which can take their stop timeout (10 s).
        for i in $(seq 300); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        kill -KILL "$pid" 2>/dev/null || true
        wait "$pid" 2>/dev/null || true   # our child: reap it
    fi
    if [ -f "$dir/dockerd.log" ] && [ -n "${OPEVA_CI_LOG_DIR:-}" ]; then
        cp "$dir/dockerd.log" "$OPEVA_CI_LOG_DIR/dockerd.log" 2>/dev/null || true
    fi
    # dockerd leaves mounts under its dirs (overlay, shm, netns); deepest first, or umount fails busy.
    awk -v d="$dir" '$2 == d || index($2, d "/") == 1 {print $2}' /proc/mounts | sort -r |
        while read -r mnt; do
            umount "$mnt" 2>/dev/null || umount -l "$mnt" || echo "cannot unmount $mnt" >&2
        done
    rm -rf "$dir" || echo "cannot remove $dir" >&2
    if [ "${DOCKER_HOST:-}" = "unix://$dir/docker.sock" ]; then
        unset DOCKER_HOST
    fi
    _OPEVA_CI_DOCKER_STARTED="" _OPEVA_CI_DOCKERD_PID=""
}
