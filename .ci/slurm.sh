# Sourced by .ci/run (and by tests/slurm_support.py): a throw-away one-node Slurm 22.05 cluster on
# loopback, everything as root, for the slurm runtime tests.
#   ensure_slurm_packages   install slurmctld slurmd slurm-client munge charliecloud-runtime, and for
#                           accounting slurmdbd mariadb-server-core mariadb-client-core, if missing
#                           (under the apt lock; needs .ci/locks.sh and .ci/apt.sh)
#   slurm_up DIR            write DIR/slurm.conf and start munged, slurmctld and slurmd with their state,
#                           sockets, pid files and logs in DIR; returns once the node is idle
#   slurm_down DIR          cancel and drain DIR's jobs, TERM its daemons by pid file (KILL after a
#                           timeout) and remove DIR; safe on a half-started or already stopped cluster
#   start_slurm             slurm_up in a fresh mktemp dir of this run; exports SLURM_CONF
#   stop_slurm              slurm_down that dir (copying its logs to $OPEVA_CI_LOG_DIR first)
# Idempotent and safe under `set -euo pipefail`. No systemd, no cgroups, nothing under /etc: the
# packages' own munge key, users and dirs are not used. Measured facts behind each setting:
# /work/shared/notes/slurm.md (and docs/slurm-notes.md).
#
# Two runs on one machine each get their own dir, munge socket and ports (chosen free), so neither
# talks to nor stops the other's cluster. Every Slurm client finds the cluster through SLURM_CONF.

_OPEVA_CI_SLURM_DIR=""   # the dir of the cluster start_slurm started, once it has

# Knobs (environment): SLURM_CPUS (CPUs the node advertises; default nproc), SLURM_MIN_JOB_AGE
# (seconds slurmctld keeps a finished job; default 300, the tests' purge case lowers it),
# SLURM_ACCOUNTING=1 (also a MariaDB and slurmdbd, so that sacct works: ~2 s more to start; the CI
# cluster has none, like many small clusters, and only the test of the sacct path asks for it).
SLURM_UP_TIMEOUT=${SLURM_UP_TIMEOUT:-20}      # seconds until the node must be idle
SLURM_DRAIN_TIMEOUT=${SLURM_DRAIN_TIMEOUT:-15}  # seconds for cancelled jobs to leave the node
SLURM_KILL_AFTER=${SLURM_KILL_AFTER:-10}      # seconds after SIGTERM before a daemon gets SIGKILL

ensure_slurm_packages() {
    local pkg missing=()
    for pkg in slurmctld slurmd slurm-client munge charliecloud-runtime \
        slurmdbd mariadb-server-core mariadb-client-core; do   # not mariadb-server: it upgrades perl
        ci_pkg_installed "$pkg" || missing+=("$pkg")
    done
    if [ "${#missing[@]}" -eq 0 ]; then
        return 0
    fi
    ci_apt_install "${missing[@]}"
}

# N TCP ports free on 127.0.0.1 now. Another process may take one before slurmctld or slurmd binds
# it: slurm_up then sees the daemon die and tries again with new ports.
_slurm_free_ports() {
    python3 - "$1" <<'EOF'
import socket, sys
socks = [socket.socket() for _ in range(int(sys.argv[1]))]
for s in socks:
    s.bind(("127.0.0.1", 0))
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

_slurm_write_conf() {
    local dir=$1 ctld_port=$2 slurmd_port=$3 host accounting
    accounting="AccountingStorageType=accounting_storage/none
JobAcctGatherType=jobacct_gather/none"
    if [ -s "$dir/slurmdbd.port" ]; then
        # AccountingStoragePass: the dbd connection ignores AuthInfo and would look for /run/munge's socket
        accounting="AccountingStorageType=accounting_storage/slurmdbd
AccountingStorageHost=127.0.0.1
AccountingStoragePort=$(cat "$dir/slurmdbd.port")
AccountingStoragePass=$dir/munge/munge.sock
JobAcctGatherType=jobacct_gather/linux"
    fi
    host=$(hostname -s)   # slurmctld refuses to run unless SlurmctldHost is this host's short name
    cat >"$dir/slurm.conf" <<EOF
# A one-node CI cluster written by .ci/slurm.sh: loopback only, everything as root.
ClusterName=ci
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctld_port
SlurmdPort=$slurmd_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
CredType=cred/munge
# bind 127.0.0.1, not 0.0.0.0
CommunicationParameters=NoCtldInAddrAny,NoInAddrAny
StateSaveLocation=$dir/state
SlurmdSpoolDir=$dir/spool
SlurmctldPidFile=$dir/slurmctld.pid
SlurmdPidFile=$dir/slurmd.pid
SlurmctldLogFile=$dir/log/slurmctld.log
SlurmdLogFile=$dir/log/slurmd.log
# else "error: Configured MailProg is invalid"
MailProg=/bin/true
# no cgroup plugins: nothing enforces memory or CPUs here
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
# without slurmdbd sacct is unavailable: finished jobs are in squeue (for MinJobAge), then in the jobcomp file
$accounting
JobCompType=jobcomp/filetxt
JobCompLoc=$dir/log/jobcomp.txt
MpiDefault=none
SchedulerType=sched/backfill
# submit -> RUNNING in ~0.45 s instead of ~2.4 s
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
ReturnToService=2
# lets CPUs= exceed the real count (SLURM_CPUS)
SlurmdParameters=config_overrides
MinJobAge=${SLURM_MIN_JOB_AGE:-300}
# a job the node can never run is refused at submit, not left PENDING (Reason=PartitionConfig)
EnforcePartLimits=ALL
KillWait=5
NodeName=$host NodeAddr=127.0.0.1 CPUs=${SLURM_CPUS:-$(nproc)} RealMemory=$(awk '/MemTotal/{print int($2/1024*0.9)}' /proc/meminfo) State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
EOF
}

# The pid in DIR/FILE if that process still runs, else nothing.
_slurm_live_pid() {
    local pid
    pid=$(cat "$1" 2>/dev/null) || return 0
    if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
        echo "$pid"
    fi
}

# TERM the processes in the pid files given (all at once: each takes ~2 s), KILL those left after
# $SLURM_KILL_AFTER seconds.
_slurm_stop_pids() {
    local file pid pids=() i
    for file in "$@"; do
        pid=$(_slurm_live_pid "$file")
        [ -n "$pid" ] && pids+=("$pid")
    done
    [ "${#pids[@]}" -eq 0 ] && return 0
    kill -TERM "${pids[@]}" 2>/dev/null || true
    for pid in "${pids[@]}"; do
        for i in $(seq $((SLURM_KILL_AFTER * 20))); do
            [ -e "/proc/$pid" ] || break
            sleep 0.05
        done
        if [ -e "/proc/$pid" ]; then
            echo "slurm_down: $pid still alive ${SLURM_KILL_AFTER}s after SIGTERM: SIGKILL" >&2
            kill -KILL "$pid" 2>/dev/null || true
        fi
    done
}

# True when the daemon of pid file $1 has died: its file names a dead process, or is still missing
# $2 seconds after the start (the daemons write it right after they fork into the background).
_slurm_daemon_dead() {
    if [ -s "$1" ]; then
        [ -z "$(_slurm_live_pid "$1")" ]
    else
        [ "$SECONDS" -ge "$2" ]
    fi
}

# Start slurmctld and slurmd on DIR's config; 0 once the node is idle, 1 if a daemon died or the
# deadline passed. Every client call is bounded by `timeout`: sinfo blocks long without a controller.
_slurm_start_daemons() {
    local dir=$1 end=$((SECONDS + SLURM_UP_TIMEOUT)) grace=$((SECONDS + 5))
    SLURM_CONF="$dir/slurm.conf" slurmctld || return 1
    SLURM_CONF="$dir/slurm.conf" slurmd || return 1
    until [ "$(SLURM_CONF="$dir/slurm.conf" timeout 5 sinfo -h -o %T 2>/dev/null)" = idle ]; do
        if [ "$SECONDS" -ge "$end" ] || _slurm_daemon_dead "$dir/slurmctld.pid" "$grace" ||
            _slurm_daemon_dead "$dir/slurmd.pid" "$grace"; then
            return 1
        fi
        sleep 0.1
    done
}

# A MariaDB (datadir in DIR, 127.0.0.1 on a free port) and a slurmdbd (free port) for SLURM_ACCOUNTING=1.
# slurmdbd reads DIR/slurmdbd.conf, next to SLURM_CONF; it always listens on 0.0.0.0 (no option in 22.05).
_slurm_start_accounting() {
    local dir=$1 db_port dbd_port i
    read -r db_port dbd_port <<<"$(_slurm_free_ports 2)"
    mkdir -p "$dir/db"
    mariadb-install-db --no-defaults --datadir="$dir/db" --user=root --auth-root-authentication-method=normal \
        --skip-test-db >"$dir/log/mariadb-install.log" 2>&1 || return 1
    mariadbd --no-defaults --datadir="$dir/db" --user=root --bind-address=127.0.0.1 --port="$db_port" \
        --socket="$dir/mysqld.sock" --pid-file="$dir/mysqld.pid" --log-error="$dir/log/mysqld.log" \
        --innodb-buffer-pool-size=64M </dev/null >/dev/null 2>&1 &
    for i in $(seq 100); do
        mariadb -S "$dir/mysqld.sock" -u root -e 'select 1' >/dev/null 2>&1 && break
        sleep 0.1
    done
    mariadb -S "$dir/mysqld.sock" -u root -e "CREATE USER 'slurm'@'127.0.0.1' IDENTIFIED BY 'slurm';
        GRANT ALL ON slurm_acct_db.* TO 'slurm'@'127.0.0.1';" || return 1
    cat >"$dir/slurmdbd.conf" <<EOF
AuthType=auth/munge
AuthInfo=socket=$dir/munge/munge.sock
DbdHost=localhost
DbdAddr=127.0.0.1
DbdPort=$dbd_port
SlurmUser=root
StorageType=accounting_storage/mysql
StorageHost=127.0.0.1
StoragePort=$db_port
StorageUser=slurm
StoragePass=slurm
StorageLoc=slurm_acct_db
PidFile=$dir/slurmdbd.pid
LogFile=$dir/log/slurmdbd.log
EOF
    chmod 600 "$dir/slurmdbd.conf"   # slurmdbd refuses a readable one (it holds the DB password)
    SLURM_CONF="$dir/slurm.conf" slurmdbd || return 1
    echo "$dbd_port" >"$dir/slurmdbd.port"
}

# Wait until slurmdbd answers (needs DIR/slurm.conf for its address), at most 10 s.
_slurm_wait_accounting() {
    local dir=$1 i
    for i in $(seq 100); do
        SLURM_CONF="$dir/slurm.conf" timeout 5 sacctmgr -n show cluster >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "slurm_up: slurmdbd did not answer within 10 s" >&2
    return 1
}

slurm_up() {
    local dir=$1 ports attempt
    if [ ${#dir} -gt 80 ]; then
        echo "slurm_up: $dir is too long for the munge socket path (108 bytes at most)" >&2
        return 1
    fi
    mkdir -p "$dir"/{state,spool,log,munge}
    chmod 755 "$dir" "$dir/munge"   # munged: every dir above its socket needs o+x (mktemp makes 0700)
    if [ -z "$(_slurm_live_pid "$dir/munge/munged.pid")" ]; then
        mungekey -c -f -k "$dir/munge/munge.key" >/dev/null
        munged -S "$dir/munge/munge.sock" --key-file="$dir/munge/munge.key" --log-file="$dir/log/munged.log" \
            --pid-file="$dir/munge/munged.pid" --seed-file="$dir/munge/munged.seed" || return 1
    fi
    if [ "${SLURM_ACCOUNTING:-0}" = 1 ] && [ -z "$(_slurm_live_pid "$dir/slurmdbd.pid")" ]; then
        _slurm_start_accounting "$dir" || return 1
    fi
    for attempt in 1 2 3; do
        ports=$(_slurm_free_ports 2)
        # unquoted: two words, the two ports
        _slurm_write_conf "$dir" $ports
        if [ "$attempt" = 1 ] && [ -s "$dir/slurmdbd.port" ]; then
            _slurm_wait_accounting "$dir" || return 1
        fi
        if _slurm_start_daemons "$dir"; then
            echo "slurm: one-node cluster up (SLURM_CONF=$dir/slurm.conf, ports $ports)"
            return 0
        fi
        echo "slurm_up: attempt $attempt did not come up (ports $ports); last log lines:" >&2
        tail -n 5 "$dir"/log/slurmctld.log "$dir"/log/slurmd.log >&2 2>/dev/null || true
        _slurm_stop_pids "$dir/slurmctld.pid" "$dir/slurmd.pid"
        rm -f "$dir/slurmctld.pid" "$dir/slurmd.pid"
    done
    return 1
}

slurm_down() {
    local dir=$1 ids i
    [ -d "$dir" ] || return 0
    if [ -n "$(_slurm_live_pid "$dir/slurmctld.pid")" ]; then
        # Cancel and drain first: slurmstepd ignores SIGTERM, and jobs outlive daemons stopped under them.
        ids=$(SLURM_CONF="$dir/slurm.conf" timeout 5 squeue -h -t PD,R,CG,S -o %A 2>/dev/null || true)
        if [ -n "$ids" ]; then
            # unquoted: one id a word
            SLURM_CONF="$dir/slurm.conf" timeout 5 scancel --quiet --full $ids 2>/dev/null || true
            for i in $(seq $((SLURM_DRAIN_TIMEOUT * 10))); do
                [ -z "$(SLURM_CONF="$dir/slurm.conf" timeout 5 squeue -h -t PD,R,CG,S 2>/dev/null)" ] && break
                sleep 0.1
            done
        fi
    fi
    _slurm_stop_pids "$dir/slurmctld.pid" "$dir/slurmd.pid" "$dir/slurmdbd.pid" "$dir/mysqld.pid" \
        "$dir/munge/munged.pid"
    rm -rf "$dir" || echo "slurm_down: cannot remove $dir" >&2
}

start_slurm() {
    if [ -n "$_OPEVA_CI_SLURM_DIR" ]; then
        return 0
    fi
    # Short on purpose: the munge socket path must stay under the 108-byte limit of unix socket names.
    _OPEVA_CI_SLURM_DIR=$(mktemp -d /tmp/opeva-sl.XXXXXX)   # from here on stop_slurm cleans it up
    slurm_up "$_OPEVA_CI_SLURM_DIR" || return 1
    export SLURM_CONF=$_OPEVA_CI_SLURM_DIR/slurm.conf
}

stop_slurm() {
    local dir=$_OPEVA_CI_SLURM_DIR
    if [ -z "$dir" ]; then
        return 0
    fi
    if [ -d "$dir/log" ] && [ -n "${OPEVA_CI_LOG_DIR:-}" ]; then
        mkdir -p "$OPEVA_CI_LOG_DIR/slurm" && cp "$dir"/log/* "$OPEVA_CI_LOG_DIR/slurm/" 2>/dev/null || true
    fi
    slurm_down "$dir"
    if [ "${SLURM_CONF:-}" = "$dir/slurm.conf" ]; then
        unset SLURM_CONF
    fi
    _OPEVA_CI_SLURM_DIR=""
}
