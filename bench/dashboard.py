"""The dashboard's jobs page with 100k jobs: time from navigation to the first frame painted with jobs
in the table, in headless Debian Chromium (target <= 1 s; docs/dashboard.md).

    python bench/dashboard.py                 # 100k jobs, 10 page loads
    python bench/dashboard.py --jobs 10000 --loads 5
    python bench/dashboard.py --screenshots docs   # also docs/dashboard.png and docs/dashboard-job.png

What it does, all on this machine: seeds N jobs straight onto disk (bench/seed.py), starts the real
server (``opeva-spool serve`` as a subprocess, as bench/run.py does), then loads /ui/ in a fresh
headless Chromium ``--loads`` times. The figure is the page's own performance mark
``opeva:jobs-first-data`` (set by jobs.js in the first animation frame after the first /jobs answer
is in the table), measured from the navigation's start: HTML, CSS, the modules, one /jobs request
and the rendering of its 50 rows. The first load runs with an empty browser cache; the others
revalidate the files (304s). It prints each load, then the median, the slowest and the cold one.
"""

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, REPO)
sys.path.insert(0, HERE)

import run as bench_run  # noqa: E402  (its ServerProcess, shared with the main benchmark)
import seed as seeding  # noqa: E402

from tests.browser_support import start_chromium  # noqa: E402

TARGET_SECONDS = 1.0
FIRST_DATA_MARK = "opeva:jobs-first-data"
PAGE_TIMEOUT = 30.0
DEMO_JOBS = 4


def first_data_seconds(driver, url):
    """Load ``url`` and wait for the jobs page's first-data mark; seconds from the navigation's start."""
    driver.get("about:blank")
    driver.get(url)
    deadline = time.monotonic() + PAGE_TIMEOUT
    while time.monotonic() < deadline:
        mark = driver.execute_script("const m = performance.getEntriesByName(arguments[0]); "
                                     "return m.length ? m[0].startTime : null", FIRST_DATA_MARK)
        if mark is not None:
            rows = driver.execute_script("return document.querySelectorAll('#jobs tbody tr[data-job-id]').length")
            if not rows:
                raise RuntimeError("the mark was set but the table has no job rows")
            return mark / 1000.0
        time.sleep(0.02)
    raise RuntimeError(f"no {FIRST_DATA_MARK} mark within {PAGE_TIMEOUT}s")


def measure(jobs, loads, workdir):
    root = os.path.join(workdir, "root")
    print(f"seeding {jobs:,} jobs ...", flush=True)
    seeded = seeding.seed(root, jobs)
    print(f"seeded in {seeded['seconds']:.1f}s; starting the server ...", flush=True)
    server = bench_run.ServerProcess(root, workdir, worker=False)
    driver = None
    try:
        print(f"server ready in {server.startup_s:.1f}s on port {server.port}", flush=True)
        driver = start_chromium(os.path.join(workdir, "profile"))
        if driver is None:
            raise SystemExit("needs Debian's chromium and /usr/bin/chromedriver (apt-get install chromium "
                             "chromium-driver)")
        url = f"http://127.0.0.1:{server.port}/ui/"
        times = []
        for number in range(loads):
            seconds = first_data_seconds(driver, url)
            times.append(seconds)
            print(f"  load {number + 1}{' (cold cache)' if number == 0 else ''}: {seconds * 1000:.0f} ms", flush=True)
    finally:
        if driver is not None:
            driver.quit()
        server.stop()
    median, slowest = statistics.median(times), max(times)
    verdict = "ok" if median <= TARGET_SECONDS else "MISSED"
    print(f"jobs page, {jobs:,} jobs: first paint with data median {median * 1000:.0f} ms, slowest "
          f"{slowest * 1000:.0f} ms, cold {times[0] * 1000:.0f} ms "
          f"(target <= {TARGET_SECONDS * 1000:.0f} ms: {verdict})")
    return times


def screenshots(out_dir, workdir):
    """docs/dashboard.png (the jobs page with a few demo jobs) and docs/dashboard-job.png (a finished demo job)."""
    root = os.path.join(workdir, "demo-root")
    server = bench_run.ServerProcess(root, workdir, worker=True)
    driver = start_chromium(os.path.join(workdir, "demo-profile"), size=(1400, 900))
    try:
        client = bench_run.Client(server.port)
        config = "experiment: {name: demo, run_name: quick-start}\ndemo: {episodes: 4, steps: 30, step_seconds: 0.05}\n"
        client.request("POST", "/experiment-configs/create", {"file_name": "demo.yaml", "config": config})
        job_ids = []
        for number in range(DEMO_JOBS):
            _, body, _ = client.request("POST", "/run-simulation", {
                "config_path": "demo.yaml", "target_host": "local", "job_name": f"ppo-seed-{number + 1}",
                "submitted_by": ("alice", "bob")[number % 2]})
            job_ids.append(json.loads(body)["job_id"])
        # Let the first ones finish and the last one run when the jobs page is shot.
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            states = [json.loads(client.request("GET", f"/status/{job_id}")[1])["status"] for job_id in job_ids]
            if states[0] == "finished" and states[-2] in ("finished", "running"):
                break
            time.sleep(0.2)
        base = f"http://127.0.0.1:{server.port}"
        driver.get(base + "/ui/")
        time.sleep(1.5)
        driver.save_screenshot(os.path.join(out_dir, "dashboard.png"))
        driver.get(f"{base}/ui/job?id={job_ids[0]}")
        time.sleep(2.5)
        driver.save_screenshot(os.path.join(out_dir, "dashboard-job.png"))
        client.close()
    finally:
        driver.quit()
        server.stop()
    print(f"wrote {out_dir}/dashboard.png and {out_dir}/dashboard-job.png")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=100_000, help="jobs to seed (default 100000)")
    parser.add_argument("--loads", type=int, default=10, help="page loads to time (default 10)")
    parser.add_argument("--screenshots", metavar="DIR", help="also write dashboard.png and dashboard-job.png there")
    args = parser.parse_args(argv)
    workdir = tempfile.mkdtemp(prefix="opeva-bench-ui-")
    try:
        if args.screenshots:
            screenshots(args.screenshots, workdir)
        if args.loads:
            measure(args.jobs, args.loads, workdir)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
