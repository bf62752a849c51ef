"""Lease guards: kill a host's jobs when its agent stops renewing its heartbeat.

An agent that is frozen (SIGSTOP, swapped out, a hung NFS call) cannot stop its jobs
itself, yet the server will requeue them once the host has looked dead for
``offline_after``. A guard is a separate process that does not share the agent's
fate: it watches the agent's heartbeat file and, when it has not changed for the
lease time *on the guard's own clock* (lease_clock), ends the jobs: SIGTERM, then
SIGKILL ``grace`` seconds later. The agent sets lease + grace well below
``offline_after``, so the old attempt is dead before a new one can be claimed.

Two forms:

``python -I .../runtimes/guard.py process --heartbeat F --lease S --grace G --lock L -- ARGV``
    Wraps one attempt of the process runtime. The guard leads the attempt's session
    and process group; the job runs in that group, so the agent's ``killpg`` reaches
    both, and the guard's own kill reaches every process of the attempt. The guard
    holds an flock on ``L`` (local disk), inherited by the job, so a restarted agent
    can tell whether any process of the attempt is still alive (``reap``).

``python -m opeva_spool.runtimes.guard containers --heartbeat F --lease S --grace G``
``    --label opeva.host=H --label opeva.root=D --agent-id A --agent-pid P [--docker-host URL]``
    One per Docker agent, in its own session. Kills every container carrying all the
    labels (this deployment's containers for host H) when the lease lapses. It exits when
    a successor agent's heartbeat appears (that agent runs its own guard), or when its
    agent is dead and nothing of this host runs any more.
"""

import argparse
import errno
import fcntl
import json
import os
import signal
import sys
import threading
import time

POLL_SECONDS = 0.1


def lease_clock():
    """Seconds on the clock leases are timed with: monotonic, and still running while the
    machine is suspended (CLOCK_MONOTONIC stops then). After a resume the lease must look
    as old as it is, or jobs would run on beside the attempts that replaced them."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)

# A lock file left by a guard that was itself SIGKILLed alone: how long reap() waits for
# the attempt's last process to go once it has sent SIGKILL to the attempt's group.
REAP_TIMEOUT = 10.0
# How long a containers guard whose agent is dead keeps trying to reach an engine that does not answer.
ENGINE_GIVE_UP = 30.0


class HeartbeatClock:
    """When the heartbeat last changed, on this process's lease_clock.

    The file is read in a thread of its own: on a ``hard`` NFS mount a read of an
    unreachable share blocks indefinitely, and a guard blocked in that read must still
    see its lease run out. A read that hangs simply never reports a change.
    """

    def __init__(self, path, poll=POLL_SECONDS):
        self.path = path
        self.poll = poll
        self.changed_at = lease_clock()  # start-up counts as a change: the agent just beat
        self.doc = None
        self._key = None
        threading.Thread(target=self._watch, daemon=True).start()

    def _read(self):
        # Read the content, not stat(): attribute caching can hide a new mtime for
        # acregmin seconds, while open() revalidates (close-to-open consistency).
        try:
            with open(self.path, "rb") as handle:
                doc = json.loads(handle.read())
        except (OSError, ValueError):
            return None
        return doc if isinstance(doc, dict) else None

    def _watch(self):
        while True:
            doc = self._read()
            if doc is not None:
                key = (doc.get("agent_id"), doc.get("counter"))
                if key != self._key:
                    self._key, self.doc, self.changed_at = key, doc, lease_clock()
            time.sleep(self.poll)

    def age(self):
        return lease_clock() - self.changed_at


def say(message):
    # stderr of a process guard is the attempt's log: the kill is visible there.
    sys.stderr.write(f"[opeva-spool guard {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}] {message}\n")
    sys.stderr.flush()


# ----- the process form ---------------------------------------------------------------------


def hold_lock(path):
    """An flock on ``path`` held by this process and inherited by the job (fd left open)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    os.ftruncate(fd, 0)
    os.write(fd, str(os.getpid()).encode())
    os.set_inheritable(fd, True)
    return fd


def run_process(args):
    # Started with start_new_session: this process leads the session and the process group.
    hold_lock(args.lock)
    clock = HeartbeatClock(args.heartbeat)
    # SIGTERM comes from the agent's killpg to the whole group: the job gets it too and
    # decides; the guard waits for the job's exit code instead of dying first.
    signal.signal(signal.SIGTERM, lambda *_: None)
    try:
        child = os.fork()
    except OSError as exc:
        say(f"cannot start the job: {exc.strerror}")
        return 127
    if child == 0:  # exec resets the SIGTERM handler above to the default
        try:
            os.execvp(args.argv[0], args.argv)
        except OSError as exc:
            say(f"cannot run {args.argv[0]!r}: {exc.strerror}")
        os._exit(127)
    terminated_at = None
    while True:
        pid, status = os.waitpid(child, os.WNOHANG)
        if pid:
            # Its job is over: the lock file goes (a daemon the job left behind in the group
            # keeps the unlinked lock; reap only looks for attempts that never ended).
            os.unlink(args.lock)
            return exit_like(status)
        if terminated_at is None and clock.age() > args.lease:
            say(f"the agent's heartbeat has not changed for {clock.age():.1f}s (lease {args.lease:g}s): "
                f"stopping this attempt before the server hands the job to another one")
            terminated_at = lease_clock()
            os.killpg(0, signal.SIGTERM)  # ignored by this guard (handler above)
        if terminated_at is not None and lease_clock() - terminated_at > args.grace:
            say("the job outlived the grace period: SIGKILL")
            os.killpg(0, signal.SIGKILL)  # the guard dies with its group; nobody is left to report to
        time.sleep(POLL_SECONDS)


def exit_like(status):
    """End this guard the way its job ended, so the agent sees the job's own exit status."""
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        signal.signal(-code, signal.SIG_DFL)
        os.kill(os.getpid(), -code)
    return code


def reap(lock_dir):
    """Kill what is left of earlier attempts whose guard lock is still held; wait until gone.

    Called by a restarting agent *before* it requeues its predecessor's process
    attempts. Without it, the old attempt (its guard sees the successor's heartbeat
    and keeps going) would overlap the next attempt. Each held lock names its guard,
    which leads the attempt's process group. Returns the names of the locks it broke.

    Races: a guard creates its file before it locks it, so a reap running meanwhile
    would take the fresh file for a finished attempt; reap runs only while the agent
    starts, before it launches anything, after its predecessor died. A guard that ends
    meanwhile unlinks its file (skipped). A guard SIGKILLed on its own leaves its job
    holding the lock in a group whose id is the dead guard's pid; the pid could be
    reused by an unrelated process group leader meanwhile (accepted: very unlikely).
    """
    killed = []
    for name in sorted(os.listdir(lock_dir)) if os.path.isdir(lock_dir) else ():
        path = os.path.join(lock_dir, name)
        try:
            fd = os.open(path, os.O_RDWR)
        except FileNotFoundError:
            continue  # that attempt ended and its guard removed the file
        try:
            if not _try_lock(fd):
                pgid = int(os.read(fd, 32) or b"0")
                if pgid > 1:
                    try:
                        os.killpg(pgid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass  # the guard died alone; the job's processes still hold the lock
                    killed.append(name)
                deadline = lease_clock() + REAP_TIMEOUT
                while not _try_lock(fd):
                    if lease_clock() > deadline:
                        raise TimeoutError(f"a process of {name} still holds its lock after SIGKILL")
                    time.sleep(0.05)
            os.unlink(path)  # unlocked: every process of that attempt has ended
        finally:
            os.close(fd)
    return killed


def _try_lock(fd):
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EACCES):
            return False
        raise


# ----- the containers form ------------------------------------------------------------------


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass
    return True


def run_containers(args):
    import docker

    from .docker import ENGINE_ERRORS

    if args.docker_host:
        client = docker.DockerClient(base_url=args.docker_host, timeout=10)
    else:
        client = docker.from_env(timeout=10)
    clock = HeartbeatClock(args.heartbeat)
    label = {"label": args.label}
    lapsed_at = None
    seen_own = False
    reached_at = lease_clock()
    while True:
        time.sleep(POLL_SECONDS)
        writer = (clock.doc or {}).get("agent_id")
        seen_own = seen_own or writer == args.agent_id
        if seen_own and writer != args.agent_id:
            return 0  # a new agent of this host took over, with its own guard
        if clock.age() <= args.lease:
            lapsed_at = None
            continue
        lapsed_at = lapsed_at or lease_clock()
        signum = "SIGKILL" if lease_clock() - lapsed_at > args.grace else "SIGTERM"
        try:
            running = client.containers.list(filters={**label, "status": "running"}, ignore_removed=True)
            for container in running:
                say(f"lease of {args.agent_id} lapsed ({clock.age():.1f}s): {signum} to {container.name}")
                try:
                    container.kill(signal=signum)
                except ENGINE_ERRORS:
                    pass  # stopped meanwhile; the next round sees it gone
        except ENGINE_ERRORS as exc:
            # Retried: an engine restarting with live-restore still has the containers. With the
            # agent gone too, give up after a while rather than linger for an engine that is gone.
            if not _alive(args.agent_pid) and lease_clock() - reached_at > ENGINE_GIVE_UP:
                say(f"giving up: the Docker engine has not answered for {ENGINE_GIVE_UP:g}s: {exc}")
                return 1
            continue
        reached_at = lease_clock()
        if not running and not _alive(args.agent_pid):
            return 0  # nothing of this host runs and no agent is left to start more


def parser():
    top = argparse.ArgumentParser(prog="python -m opeva_spool.runtimes.guard")
    sub = top.add_subparsers(dest="form", required=True)
    for name in ("process", "containers"):
        form = sub.add_parser(name)
        form.add_argument("--heartbeat", required=True, help="the agent's heartbeat.json")
        form.add_argument("--lease", type=float, required=True, help="seconds without a change before stopping")
        form.add_argument("--grace", type=float, required=True, help="seconds from SIGTERM to SIGKILL")
    process = sub.choices["process"]
    process.add_argument("--lock", required=True, help="lock file on local disk, held while the attempt lives")
    process.add_argument("argv", nargs=argparse.REMAINDER)
    containers = sub.choices["containers"]
    containers.add_argument("--label", action="append", required=True,
                            help="a label filter of the containers to guard (all must match); repeated")
    containers.add_argument("--agent-id", required=True)
    containers.add_argument("--agent-pid", type=int, required=True)
    containers.add_argument("--docker-host", default="")
    return top


def main(argv=None):
    args = parser().parse_args(argv)
    if args.form == "process":
        if args.argv[:1] == ["--"]:
            args.argv = args.argv[1:]
        if not args.argv:
            say("no command given")
            return 2
        return run_process(args)
    return run_containers(args)


if __name__ == "__main__":
    sys.exit(main())
