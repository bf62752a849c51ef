"""Session fixtures: a real MongoDB wire-protocol server (nx-27017) over TCP, seeded with a site.

nx-27017 runs as a subprocess with in-memory databases; tests talk to it with pymongo
exactly as production talks to MongoDB. Without it, CI fails and other runs skip.
The seeded site ``lab`` is described in ``LAB`` below; tests compute their expectations
from the same formulas.
"""

import datetime as dt
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pymongo
import pytest

from tests.clients import free_port

UTC = dt.timezone.utc
LAB = "lab"
# Europe/Nicosia leaves EET for EEST at 2024-03-31 01:00 UTC (03:00 local becomes 04:00).
LAB_TIMEZONE = "Europe/Nicosia"
LAB_START = dt.datetime(2024, 3, 30, 0, 0, tzinfo=UTC)
LAB_SAMPLES = 2 * 24 * 4  # two days at 15 minutes
SAMPLE = dt.timedelta(minutes=15)
# building_B2 misses 10:00-10:30 on day one (3 samples); building_B10 misses 12:00-18:00 on day two.
B2_GAP = range(40, 43)
B10_GAP = range(96 + 48, 96 + 72)
ALICE = {"first": 32, "last": 47, "departure": "2024-03-30T12:00:00Z"}  # B1-C1, 08:00-11:45
EV42 = {"first": 72, "last": 79}  # B1-C1, 18:00-19:45, no flexibility given

LAB_SCHEMA = {
    "timezone": LAB_TIMEZONE,
    "buildings": {
        "B1": {
            "include": True,
            "pv": {"type": "citylearn.energy_model.PV", "autosize": False, "attributes": {"nominal_power": 5.0}},
            "electrical_storage": {
                "type": "citylearn.energy_model.Battery", "autosize": False,
                "attributes": {"capacity": 10.0, "nominal_power": 5.0, "initial_soc": 0.5, "depth_of_discharge": 0.9},
            },
            "chargers": {"B1-C1": {"attributes": {"nominal_power": 7.4}}, "B1-C2": {}},
        },
        "B2": {"include": True},
        "B10": {"include": True},
    },
}


def b1_load(i):
    return 2.0 + (i % 4) * 0.5


def b1_temperature(i):
    return 20.0 + (i % 4)


def b1_solar(i):
    return 4.0 if 6 <= (LAB_START + i * SAMPLE).hour < 15 else 0.0


def b2_load(i):
    return 0.1 * i


def b10_load(i):
    return float((LAB_START + i * SAMPLE).hour)


def outdoor_temperature(i, building):
    return 10.0 + (i % 96) / 8.0 + (1.0 if building == "B2" else 0.0)


def _sessions(i):
    if ALICE["first"] <= i <= ALICE["last"]:
        flexibility = {"departure.time": ALICE["departure"], "departure.soc": 80,
                       "arrival.time": "2024-03-30T08:00:00Z"}
        return [
            {"charger_id": "B1-C1", "user_id": "alice", "power": 7.0, "soc": 30 + (i - 32) * 3,
             "flexibility": flexibility},
            {"charger_id": "X9", "user_id": "bob", "power": 3.0, "soc": 50},
        ]
    if EV42["first"] <= i <= EV42["last"]:
        return [{"charger_id": "B1-C1", "user_id": 42, "power": 7.0, "soc": 0.5 + (i - 72) * 0.05}]
    return []


def lab_documents():
    """{collection: [documents]} of the seeded site."""
    docs = {"building_B1": [], "building_B2": [], "building_B10": [], "pricing": []}
    for i in range(LAB_SAMPLES):
        stamp = LAB_START + i * SAMPLE
        docs["building_B1"].append({
            "timestamp": stamp, "non_shiftable_load": b1_load(i), "solar_generation": b1_solar(i),
            "indoor_dry_bulb_temperature": b1_temperature(i), "indoor_relative_humidity": 40.0 + (i % 2) * 10,
            "outdoor_dry_bulb_temperature": outdoor_temperature(i, "B1"), "charging_sessions": _sessions(i),
        })
        if i not in B2_GAP:
            docs["building_B2"].append({
                "timestamp": stamp, "non_shiftable_load": b2_load(i), "indoor_dry_bulb_temperature": 23.0,
                "outdoor_dry_bulb_temperature": outdoor_temperature(i, "B2"),
            })
        if i not in B10_GAP:
            docs["building_B10"].append({"timestamp": stamp, "non_shiftable_load": b10_load(i),
                                         "indoor_dry_bulb_temperature": 21.0, "cooling_demand": 1.0})
        if i % 4 == 0:  # hourly prices, cheaper at night
            docs["pricing"].append({"timestamp": stamp, "electricity_pricing": 0.1 if stamp.hour < 7 else 0.3})
    return docs


def _unavailable(why):
    if os.environ.get("CI") == "true":
        pytest.fail(f"{why} (CI must provide it)")
    pytest.skip(why)


@pytest.fixture(scope="session")
def mongo_uri():
    """URI of a private nx-27017 listening on 127.0.0.1 for this test session."""
    exe = shutil.which("nx-27017") or os.path.join(os.path.dirname(sys.executable), "nx-27017")
    if not os.path.exists(exe):
        _unavailable("nx-27017 is not installed (pip install nx-27017)")
    work = tempfile.mkdtemp(prefix="nx")
    port = free_port()
    with open(os.path.join(work, "stdout.log"), "ab") as out:
        proc = subprocess.Popen(
            [exe, "--host", "127.0.0.1", "-p", str(port), "--data-dir", "memory",
             "--log-file", os.path.join(work, "nx.log"), "--pid-file", os.path.join(work, "nx.pid")],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
        )
    uri = f"mongodb://127.0.0.1:{port}/"
    client = pymongo.MongoClient(uri, serverSelectionTimeoutMS=200)
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                client.admin.command("ping")
                break
            except pymongo.errors.PyMongoError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    _unavailable(f"nx-27017 did not start (see {work})")
                time.sleep(0.05)
        yield uri
    finally:
        client.close()
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(work, ignore_errors=True)


@pytest.fixture(scope="session")
def mongo_client(mongo_uri):
    client = pymongo.MongoClient(mongo_uri, serverSelectionTimeoutMS=2000, tz_aware=True)
    yield client
    client.close()


@pytest.fixture(scope="session")
def lab_site(mongo_client):
    """The seeded site ``lab``: its name; the schema is stored as the API would store it."""
    db = mongo_client[LAB]
    for collection, docs in lab_documents().items():
        db[collection].insert_many(docs)
    db["schema"].insert_one({"_id": "schema", "schema": LAB_SCHEMA})
    return LAB
