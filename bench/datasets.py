"""A year of site data into a CityLearn dataset: wall time and the server's peak RSS (targets <= 20 s, <= 1 GB).

    python bench/datasets.py                    # 10 buildings, one year at 15 minutes (~350k documents)
    python bench/datasets.py --days 30          # quicker
    python bench/datasets.py --profile out.txt  # also py-spy the server during the build (bench/profile_summary.py)
    python bench/datasets.py --repo /path/tree  # the server runs that tree (e.g. an older export, for a ratio)

All on this machine: a private MongoDB wire server (nx-27017, as tests/mongo_support.py starts it) seeded
with site ``bench``: 10 buildings, each with two chargers, a document every 15 minutes holding loads,
temperatures, PV, EV sessions and some fields the build does not read (as real meters send), hourly
prices and half-hourly weather in their own collections, and a few gaps. Then the real server
(``python -m opeva_spool.cli serve``, a subprocess) gets ``POST /dataset`` for the whole year at 15 minutes,
exactly as a client sends it, and this script polls ``GET /dataset/status/<name>`` every 50 ms until it
is ready. Wall time = POST sent -> status ready. Peak RSS = the server process's VmHWM (/proc) after
the build, its VmRSS before it beside it. Prints each next to its target; raw figures go to
bench/results/datasets.json.
"""

import argparse
import datetime as dt
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from run import end_process, free_port, request, save_figures, start_plain_server  # noqa: E402

TARGET_SECONDS = 20.0
TARGET_RSS_MB = 1024.0
SITE = "bench"
START = dt.datetime(2024, 1, 1, tzinfo=dt.timezone.utc)
SAMPLE = dt.timedelta(minutes=15)
BUILDINGS = [f"B{n:02d}" for n in range(1, 11)]
CHARGERS_PER_BUILDING = 2
INSERT_BATCH = 5000


def building_documents(building, days, rng):
    """One building's documents: a reading every 15 minutes, a 3-hour outage a month, EV sessions most days."""
    samples = days * 96
    outages = {rng.randrange(samples) for _ in range(max(1, days // 30))}
    missing = {i for first in outages for i in range(first, first + 12)}
    charger_ids = [f"{building}-C{n}" for n in range(1, CHARGERS_PER_BUILDING + 1)]
    session_plan = {}  # sample -> [(charger, user, first sample of the stay)]
    for day in range(days):
        for number, charger in enumerate(charger_ids):
            if rng.random() < 0.8:
                arrive = day * 96 + rng.randrange(28, 44) + number * 8
                stay = rng.randrange(8, 40)
                user = f"user{rng.randrange(30)}"
                for i in range(arrive, min(arrive + stay, samples)):
                    session_plan.setdefault(i, []).append((charger, user, arrive, stay))
    for i in range(samples):
        if i in missing:
            continue
        stamp = START + i * SAMPLE
        hour = stamp.hour + stamp.minute / 60
        sessions = [{"charger_id": charger, "user_id": user, "power": 7.0, "soc": 20 + (i - arrive) * 2,
                     "flexibility": {"departure.time": (START + (arrive + stay) * SAMPLE).isoformat(),
                                     "departure.soc": 90, "arrival.time": (START + arrive * SAMPLE).isoformat()}}
                    for charger, user, arrive, stay in session_plan.get(i, [])]
        yield {
            "timestamp": stamp,
            "non_shiftable_load": round(1.5 + rng.random() * 2.0, 3),
            "solar_generation": round(max(0.0, 5.0 - abs(hour - 12.5)) * rng.uniform(0.6, 1.0), 3),
            "indoor_dry_bulb_temperature": round(21.0 + rng.uniform(-1.5, 1.5), 2),
            "indoor_relative_humidity": round(45.0 + rng.uniform(-5, 5), 1),
            "cooling_demand": round(max(0.0, hour - 12) * 0.2, 3) if stamp.month in (6, 7, 8) else 0.0,
            "heating_demand": round(max(0.0, 8 - hour) * 0.3, 3) if stamp.month in (1, 2, 12) else 0.0,
            "outdoor_dry_bulb_temperature": round(15 + 10 * rng.random(), 2),
            "charging_sessions": sessions,
            # What meters send beside the measurements; the build's projection leaves it on the server.
            "meter": {"id": f"{building}-M1", "firmware": "4.2.1", "voltage_l1": 230.1, "voltage_l2": 229.8,
                      "voltage_l3": 231.0, "status": "ok"},
        }


def site_schema():
    return {
        "timezone": "Europe/Nicosia",
        "holidays": ["2024-01-01", "2024-12-25"],
        "buildings": {
            b: {"include": True,
                "pv": {"type": "citylearn.energy_model.PV", "autosize": False, "attributes": {"nominal_power": 5.0}},
                "electrical_storage": {"type": "citylearn.energy_model.Battery", "autosize": False,
                                       "attributes": {"capacity": 10.0, "nominal_power": 5.0}},
                "chargers": {f"{b}-C{n}": {"attributes": {"nominal_power": 7.4}}
                             for n in range(1, CHARGERS_PER_BUILDING + 1)}}
            for b in BUILDINGS
        },
    }


def seed(uri, days):
    """Fill site ``bench``; the seconds it took and how many documents it holds."""
    import pymongo

    began = time.monotonic()
    client = pymongo.MongoClient(uri, tz_aware=True)
    db = client[SITE]
    rng = random.Random(12)
    total = 0
    collections = {b: building_documents(b, days, rng) for b in BUILDINGS}
    collections["pricing"] = ({"timestamp": START + i * 4 * SAMPLE, "electricity_pricing": 0.1 + 0.2 * (i % 24 >= 7)}
                              for i in range(days * 24))
    collections["weather"] = ({"timestamp": START + i * 2 * SAMPLE, "outdoor_dry_bulb_temperature": 18.0 + i % 10,
                               "outdoor_relative_humidity": 55.0, "diffuse_solar_irradiance": 100.0,
                               "direct_solar_irradiance": 300.0} for i in range(days * 48))
    for name, docs in collections.items():
        collection = db[name if name in ("pricing", "weather") else f"building_{name}"]
        batch = []
        for doc in docs:
            batch.append(doc)
            if len(batch) == INSERT_BATCH:
                collection.insert_many(batch, ordered=False)
                total += len(batch)
                batch = []
        if batch:
            collection.insert_many(batch, ordered=False)
            total += len(batch)
        collection.create_index("timestamp")
    db["schema"].insert_one({"_id": "schema", "schema": site_schema()})
    client.close()
    return time.monotonic() - began, total


def start_mongo(work):
    exe = os.path.join(os.path.dirname(sys.executable), "nx-27017")  # not the pyenv shim: its pid is measured
    exe = exe if os.path.exists(exe) else shutil.which("nx-27017")
    port = free_port()
    proc = subprocess.Popen([exe, "--host", "127.0.0.1", "-p", str(port), "--data-dir", "memory",
                             "--log-file", os.path.join(work, "nx.log"), "--pid-file", os.path.join(work, "nx.pid")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL)
    uri = f"mongodb://127.0.0.1:{port}/"
    import pymongo

    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=200)
    deadline = time.monotonic() + 15
    while True:
        try:
            client.admin.command("ping")
            client.close()
            return proc, uri
        except pymongo.errors.PyMongoError:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise SystemExit("nx-27017 did not start") from None
            time.sleep(0.05)






def proc_status_mb(pid, field):
    """VmRSS / VmHWM of a process in MiB (Linux /proc)."""
    with open(f"/proc/{pid}/status", encoding="ascii") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    return None


def cpu_seconds(pid):
    """User + system CPU time a process has used (/proc/<pid>/stat)."""
    with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
        fields = handle.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def build(url, days, pid, profile):
    body = {"name": "year", "site_id": SITE, "period": 15, "from_ts": START.isoformat(),
            "until_ts": (START + dt.timedelta(days=days)).isoformat(), "description": "bench/datasets.py"}
    spy = None
    if profile:
        spy = subprocess.Popen(["py-spy", "record", "-p", str(pid), "-r", "50", "--format", "raw", "-o", profile,
                                "--nonblocking"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(1.0)
    began = time.monotonic()
    request(f"{url}/dataset", body)
    stages = []
    while True:
        status = request(f"{url}/dataset/status/year")
        if not stages or stages[-1][1] != status.get("stage"):
            stages.append((round(time.monotonic() - began, 2), status.get("stage")))
        if status["state"] != "building":
            break
        time.sleep(0.05)
    seconds = time.monotonic() - began
    if spy is not None:
        spy.send_signal(2)
        spy.wait(timeout=60)
    return seconds, status, stages


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=366, help="days of data (default: %(default)s: 2024)")
    parser.add_argument("--repo", default=REPO, help="the tree the server runs (default: this one)")
    parser.add_argument("--profile", help="write a py-spy raw profile of the server during the build here")
    parser.add_argument("--mongo-timeout-ms", type=int, default=30000,
                        help="the server's mongo_timeout_ms (nx-27017 answers a year's query slowly)")
    parser.add_argument("--out", default=os.path.join(HERE, "results", "datasets.json"))
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="opeva-bench-datasets-")
    mongo = server = None
    try:
        mongo, uri = start_mongo(work)
        seed_seconds, documents = seed(uri, args.days)
        print(f"seeded {documents} documents in {seed_seconds:.1f} s")
        port = free_port()
        server = start_plain_server(os.path.abspath(args.repo), os.path.join(work, "root"), port,
                                    {"OPEVA_MONGO_URI": uri, "OPEVA_MONGO_TIMEOUT_MS": str(args.mongo_timeout_ms)})
        rss_before = proc_status_mb(server.pid, "VmRSS")
        cpu_before = cpu_seconds(server.pid), cpu_seconds(mongo.pid)
        seconds, status, stages = build(f"http://127.0.0.1:{port}", args.days, server.pid, args.profile)
        server_cpu, mongo_cpu = (cpu_seconds(p) - before for p, before in zip((server.pid, mongo.pid), cpu_before,
                                                                              strict=True))
        peak = proc_status_mb(server.pid, "VmHWM")
        rss_after = proc_status_mb(server.pid, "VmRSS")
        folder = os.path.join(work, "root", "datasets", "year")
        size = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)) if os.path.isdir(folder) else 0
        figures = {"days": args.days, "buildings": len(BUILDINGS), "documents": documents, "repo": args.repo,
                   "state": status["state"], "error": status.get("error"), "build_seconds": seconds,
                   "server_rss_before_mb": rss_before, "server_peak_rss_mb": peak, "server_rss_after_mb": rss_after,
                   "dataset_bytes": size, "stages": stages, "seed_seconds": seed_seconds,
                   "server_cpu_seconds": server_cpu, "mongo_cpu_seconds": mongo_cpu,
                   "load_average": os.getloadavg()}
        print(f"state {status['state']}{' (' + str(status.get('error')) + ')' if status.get('error') else ''}, "
              f"{size / 1e6:.1f} MB written")
        print(f"build wall time   {seconds:8.1f} s    target <= {TARGET_SECONDS:.0f} s   "
              f"{'ok' if seconds <= TARGET_SECONDS else 'MISS'}")
        print(f"server peak RSS   {peak:8.1f} MiB  target <= {TARGET_RSS_MB:.0f} MiB "
              f"{'ok' if peak <= TARGET_RSS_MB else 'MISS'}  (before {rss_before:.1f}, after {rss_after:.1f})")
        print(f"CPU during the build: server {server_cpu:.1f} s, MongoDB wire server {mongo_cpu:.1f} s; "
              f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        print("stages (s, stage):", ", ".join(f"{t} {s}" for t, s in stages))
        save_figures(args.out, figures)
    finally:
        for proc in (server, mongo):
            if proc is not None:
                end_process(proc)
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
