"""Seed a shared root with N jobs directly on disk, in the spool's exact format.

Seeding through HTTP would take minutes per 100k jobs (every submit fsyncs), so this
writes the tree the way ``Spool.publish`` and an agent's ``finish`` leave it, using the
package's own ``Entry``, ``jobs.build_spec`` and ``fsio.json_bytes`` so the format stays
true. Nothing is fsynced. Run it before the server starts (the server indexes at start-up).

The mix (fractions of N): 95 % ``spool/done/finished/``, 2 % ``done/failed/``,
1 % ``done/canceled/``, 2 % ``spool/queued/`` for the agent-less host ``benchhost``.
Every job has ``jobs/<id>/job_info.json`` and empty ``logs/ progress/ results/ attempts/``;
jobs that ran also have ``attempts/1.json``. Submit times are spread over the 30 days
before now, increasing with the job number.

    python bench/seed.py ROOT N        # a standalone use; bench/run.py imports seed()
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
SPAN_NS = 30 * 24 * 3600 * 10**9
# (location kind, detail, share of N), in the order the job numbers are handed out.
MIX = (("done", "finished", 0.95), ("done", "failed", 0.02), ("done", "canceled", 0.01), ("queued", "", 0.02))

_json_bytes = getattr(fsio, "json_bytes", None) or (
    lambda obj: __import__("json").dumps(obj, indent=2, sort_keys=True).encode() + b"\n")


def _iso(ns):
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ns / 1e9))


def plan(n, now_ns=None):
    """[(job number, Location)] for n jobs: the MIX, interleaved so every state spans all times."""
    kinds = []
    for kind, detail, share in MIX:
        kinds.extend([Location(kind, detail)] * round(n * share))
    kinds = (kinds + [Location("done", "finished")] * n)[:n]
    # Interleave deterministically: job i gets kinds[(i * 7919) % n] (7919 is prime, so a permutation
    # whenever n is not a multiple of it).
    if n and n % 7919:
        kinds = [kinds[(i * 7919) % n] for i in range(n)]
    return list(enumerate(kinds))


def _write_job(spool, number, location, submit_ns):
    job_id = str(uuid.uuid4())
    body = {"command": "true", "target_host": SEED_HOST, "job_name": f"seed-{number}",
            "submitted_by": "bench-seed"}
    spec = jobs.build_spec(body, KNOWN_HOSTS, job_id=job_id, origin="api")
    spec = dataclasses.replace(spec, submitted_at=_iso(submit_ns))
    folder = spool.folder(job_id)
    os.mkdir(folder.path)
    for sub in DATA_SUBDIRS:
        os.mkdir(os.path.join(folder.path, sub))
    with open(folder.job_info, "xb") as handle:
        handle.write(_json_bytes(spec.job_info()))
    entry = Entry(spec.priority, submit_ns, spec.target_host, 1, job_id)
    if location.kind == "done" and location.detail != "canceled":
        # What Spool.claim, Runner and Spool.finish leave in the attempt record.
        ended = _iso(submit_ns + 60 * 10**9)
        record = {"job_id": job_id, "attempt": 1, "host": SEED_HOST, "agent_id": f"{SEED_HOST}:seed:1:000000",
                  "state": location.detail, "claimed_at": _iso(submit_ns + 10**9),
                  "started_at": _iso(submit_ns + 2 * 10**9), "runtime": "process", "gpus": [],
                  "pid": 4242, "ended_at": ended, "updated_at": ended,
                  "exit_code": 0 if location.detail == "finished" else 1}
        if location.detail == "failed":
            record.update(reason="exit_code", error="the job exited with code 1")
        with open(folder.attempt_record(1), "xb") as handle:
            handle.write(_json_bytes(record))
    with open(spool.entry_path(location, entry), "xb") as handle:
        handle.write(_json_bytes(spec.to_dict()))
    return job_id, location


def _seed_slice(args):
    root, items, start_ns, step_ns = args
    spool = Spool(root)
    out = []
    for number, location in items:
        job_id, location = _write_job(spool, number, location, start_ns + number * step_ns)
        out.append((job_id, location.kind, location.detail))
    return out


def seed(root, n, processes=2):
    """Write n jobs under ``root``; returns {"seconds", "jobs": [(job_id, kind, detail)]}."""
    spool = Spool(root)
    spool.ensure_layout()
    started = time.perf_counter()
    if n <= 0:
        return {"seconds": 0.0, "jobs": []}
    now_ns = time.time_ns()
    start_ns, step_ns = now_ns - SPAN_NS, max(1, SPAN_NS // n)
    items = plan(n)
    chunk = max(1, (n + processes * 4 - 1) // (processes * 4))
    slices = [(spool.root, items[i:i + chunk], start_ns, step_ns) for i in range(0, n, chunk)]
    result = []
    with multiprocessing.get_context("fork").Pool(processes) as pool:
        for part in pool.imap(_seed_slice, slices):
            result.extend(part)
    return {"seconds": time.perf_counter() - started, "jobs": result}


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python bench/seed.py ROOT N")
    done = seed(sys.argv[1], int(sys.argv[2]))
    print(f"seeded {len(done['jobs'])} jobs under {sys.argv[1]} in {done['seconds']:.1f}s")
