"""Seed a shared root with N jobs directly on disk, in the spool's exact format.

Seeding through HTTP would take minutes per 100k jobs (every submit fsyncs), so this
writes the tree the way ``Spool.publish`` and an agent's ``finish`` leave it, using the
package's own ``Entry``, ``jobs.build_spec`` and ``fsio.json_bytes`` so the format stays
true. Nothing is fsynced. Run it before the server starts (the server indexes at start-up).

The mix (fractions of N): 95 % ``spool/done/finished/``, 2 % ``done/failed/``,
1 % ``done/canceled/``, 2 % ``spool/queued/`` for the agent-less host ``benchhost``.
Every job has ``jobs/<id>/job_info.json`` and empty ``logs/ progress/ results/ attempts/``;
jobs that ran also have ``attempts/1.json``. Submit times are spread over the 30 days
before now (or SPAN_DAYS), increasing with the job number.

    python bench/seed.py ROOT N [SPAN_DAYS]   # a standalone use; bench/run.py imports seed()
"""

import dataclasses
import multiprocessing
import os
import sys
import time
import uuid

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from opeva_spool import fsio, jobs  # noqa: E402
from opeva_spool.jobs import DATA_SUBDIRS  # noqa: E402
from opeva_spool.spool import Entry, Location, Spool  # noqa: E402

SEED_HOST = "benchhost"
KNOWN_HOSTS = ("local", SEED_HOST)
# (location kind, detail, share of N), in the order the job numbers are handed out.
MIX = (("done", "finished", 0.95), ("done", "failed", 0.02), ("done", "canceled", 0.01), ("queued", "", 0.02))
ENDED_MIX = (("done", "finished", 0.95), ("done", "failed", 0.03), ("done", "canceled", 0.02))  # history only

DEFAULT_SPAN_DAYS = 30
CREATE_FLAGS = os.O_WRONLY | os.O_CREAT | os.O_EXCL


def _iso(ns):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def plan(n, mix=MIX):
    """[Location] for job numbers 0..n-1: the mix, interleaved so every state spans all times."""
    kinds = []
    for kind, detail, share in mix:
        kinds.extend([Location(kind, detail)] * round(n * share))
    kinds = (kinds + [Location("done", "finished")] * n)[:n]
    # Interleave deterministically: job i gets kinds[(i * 7919) % n] (7919 is prime, so a permutation
    # whenever n is not a multiple of it).
    if n and n % 7919:
        kinds = [kinds[(i * 7919) % n] for i in range(n)]
    return kinds


def _create(name, data, dir_fd):
    # os.open relative to an open folder: no path walk through a million-entry jobs/ per file, and none of
    # open()'s isatty/seek/fstat calls (seeding is bound by system calls).
    fd = os.open(name, CREATE_FLAGS, 0o644, dir_fd=dir_fd)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)


class _Writer:
    """Writes jobs the way Spool.publish and an agent's finish leave them, from one validated template."""

    def __init__(self, root):
        self.spool = Spool(root)
        body = {"command": "true", "target_host": SEED_HOST, "job_name": "seed", "submitted_by": "bench-seed"}
        # build_spec once (it validates); each job then differs only in its id, name and submit time.
        self.template = jobs.build_spec(body, KNOWN_HOSTS, job_id=str(uuid.uuid4()), origin="api")
        self.jobs_fd = os.open(self.spool.jobs_dir, os.O_RDONLY | os.O_DIRECTORY)
        self.location_fds = {}

    def _location_fd(self, location):
        if location not in self.location_fds:
            self.location_fds[location] = os.open(self.spool.location_dir(location), os.O_RDONLY | os.O_DIRECTORY)
        return self.location_fds[location]

    def write(self, number, location, submit_ns):
        job_id = str(uuid.uuid4())
        spec = dataclasses.replace(self.template, job_id=job_id, job_name=f"seed-{number}",
                                   submitted_at=_iso(submit_ns))
        os.mkdir(job_id, dir_fd=self.jobs_fd)
        folder_fd = os.open(job_id, os.O_RDONLY | os.O_DIRECTORY, dir_fd=self.jobs_fd)
        try:
            for sub in DATA_SUBDIRS:
                os.mkdir(sub, dir_fd=folder_fd)
            _create("job_info.json", fsio.json_bytes(spec.job_info()), folder_fd)
            if location.kind == "done" and location.detail != "canceled":
                _create(os.path.join("attempts", "1.json"), fsio.json_bytes(self._attempt(job_id, location, submit_ns)),
                        folder_fd)
        finally:
            os.close(folder_fd)
        entry = Entry(spec.priority, submit_ns, spec.target_host, 1, job_id)
        _create(entry.name, fsio.json_bytes(spec.to_dict()), self._location_fd(location))
        return job_id

    @staticmethod
    def _attempt(job_id, location, submit_ns):
        """What Spool.claim, Runner and Spool.finish leave in the attempt record."""
        ended = _iso(submit_ns + 60 * 10**9)
        record = {"job_id": job_id, "attempt": 1, "host": SEED_HOST, "agent_id": f"{SEED_HOST}:seed:1:000000",
                  "state": location.detail, "claimed_at": _iso(submit_ns + 10**9),
                  "started_at": _iso(submit_ns + 2 * 10**9), "runtime": "process", "gpus": [],
                  "pid": 4242, "ended_at": ended, "updated_at": ended,
                  "exit_code": 0 if location.detail == "finished" else 1}
        if location.detail == "failed":
            record.update(reason="exit_code", error="the job exited with code 1")
        return record


def _seed_slice(args):
    root, first, kinds, start_ns, step_ns = args
    writer = _Writer(root)
    return [(writer.write(number, location, start_ns + number * step_ns), location.kind, location.detail)
            for number, location in enumerate(kinds, first)]


def seed(root, n, processes=None, span_days=DEFAULT_SPAN_DAYS, mix=MIX):
    """Write n jobs (in the proportions of ``mix``) under ``root``, submitted over the ``span_days`` before now.

    Returns {"seconds", "jobs": [(job_id, kind, detail)]}. Several processes write at once (more than
    the cores: much of a create is waiting on the filesystem's journal).
    """
    spool = Spool(root)
    spool.ensure_layout()
    started = time.perf_counter()
    if n <= 0:
        return {"seconds": 0.0, "jobs": []}
    processes = processes or 2 * (os.cpu_count() or 1)
    span_ns = int(span_days * 24 * 3600 * 10**9)
    start_ns, step_ns = time.time_ns() - span_ns, max(1, span_ns // n)
    kinds = plan(n, mix)
    chunk = max(1, min(20_000, (n + processes * 4 - 1) // (processes * 4)))
    slices = [(spool.root, i, kinds[i:i + chunk], start_ns, step_ns) for i in range(0, n, chunk)]
    result = []
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for part in pool.imap(_seed_slice, slices):
            result.extend(part)
    return {"seconds": time.perf_counter() - started, "jobs": result}


if __name__ == "__main__":
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: python bench/seed.py ROOT N [SPAN_DAYS]")
    span = float(sys.argv[3]) if len(sys.argv) == 4 else DEFAULT_SPAN_DAYS
    done = seed(sys.argv[1], int(sys.argv[2]), span_days=span)
    print(f"seeded {len(done['jobs'])} jobs under {sys.argv[1]} in {done['seconds']:.1f}s")
