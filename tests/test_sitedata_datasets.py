"""CityLearn datasets built from the seeded site over a real nx-27017, checked by hand and by citylearn 3.0.2."""

import csv
import io
import json
import os
import shutil
import subprocess
import uuid
import zipfile

import pytest

import opeva_spool.api.sites
import opeva_spool.sitedata.citylearn
from opeva_spool.api.app import Context, make_app
from opeva_spool.settings import Settings
from tests.clients import ThreadedServer, WsgiClient
from tests.mongo_support import (
    ALICE,
    B2_GAP,
    B10_GAP,
    EV42,
    LAB,
    LAB_START,
    b1_load,
    b1_solar,
    b1_temperature,
    b2_load,
    b10_load,
)

pytestmark = pytest.mark.mongo

HERE = os.path.dirname(os.path.abspath(__file__))
FULL_RANGE = {"from_ts": "2024-03-30T00:00:00Z", "until_ts": "2024-04-01T00:00:00Z"}
CHARGER_COLUMNS = ["electric_vehicle_charger_state", "electric_vehicle_id", "electric_vehicle_departure_time",
                   "electric_vehicle_required_soc_departure", "electric_vehicle_estimated_arrival_time",
                   "electric_vehicle_estimated_soc_arrival"]


class Lab:
    def __init__(self, root, mongo_uri):
        self.root = str(root)
        self.ctx = Context(Settings(shared_root=self.root, mongo_uri=mongo_uri))
        self.app = make_app(self.ctx, [opeva_spool.api.sites])
        self.client = WsgiClient(self.app)
        self.datasets = os.path.join(self.root, "datasets")

    def build(self, name, **fields):
        body = {"name": name, "site_id": LAB, "period": 15, "description": "test", **FULL_RANGE, **fields}
        response = self.client.post("/dataset", json=body)
        assert response.status == 202, response
        self.ctx.datasets.wait(name, timeout=60)
        return self.client.get(f"/dataset/status/{name}").json()

    def rows(self, name, file_name):
        with open(os.path.join(self.datasets, name, file_name), newline="") as handle:
            return list(csv.DictReader(handle))


@pytest.fixture(scope="module")
def lab(tmp_path_factory, mongo_uri, lab_site):
    lab = Lab(tmp_path_factory.mktemp("share"), mongo_uri)
    for name, period in (("lab15", 15), ("lab60", 60)):
        status = lab.build(name, period=period, citylearn_configs={"central_agent": True, "random_seed": 7})
        assert status["state"] == "ready", status
    return lab


@pytest.fixture(scope="session")
def citylearn_python():
    path = os.environ.get("OPEVA_TEST_CITYLEARN_PYTHON") or "/tmp/opeva-citylearn-venv/bin/python"
    if not os.path.exists(path):
        message = f"no citylearn venv at {path} (run ensure_citylearn_venv from .ci/citylearn.sh)"
        if os.environ.get("CI") == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def approx(value):
    return pytest.approx(value, abs=1e-9)


def test_build_answers_202_and_status_reports_ready_with_gaps_and_warnings(lab):
    status = lab.client.get("/dataset/status/lab15").json()
    assert status["state"] == "ready" and status["progress_pct"] == 100.0 and status["error"] is None
    gaps = {(g["source"], g["first_step"], g["steps"]): g for g in status["gaps"]}
    assert gaps[("building_B2", B2_GAP.start, len(B2_GAP))]["rule"] == "linear"
    assert gaps[("building_B10", B10_GAP.start, len(B10_GAP))]["rule"] == "same_time_other_day"
    assert not [g for g in status["gaps"] if g["source"] == "pricing"]  # hourly prices are not gaps at 15 min
    warnings = " ".join(status["warnings"])
    assert "carbon_intensity" in warnings and "X9" in warnings and "cooling_device" in warnings
    assert os.path.exists(os.path.join(lab.datasets, ".builds", "lab15.json"))


def test_loads_are_kwh_per_step_and_temperatures_are_means_not_sums(lab):
    hourly = lab.rows("lab60", "B1.csv")
    assert float(hourly[0]["non_shiftable_load"]) == approx(sum(b1_load(i) for i in range(4)) / 4)  # kW mean x 1 h
    assert float(hourly[0]["indoor_dry_bulb_temperature"]) == approx(sum(b1_temperature(i) for i in range(4)) / 4)
    assert float(hourly[6]["solar_generation"]) == approx(b1_solar(24))
    quarter = lab.rows("lab15", "B1.csv")
    assert [float(r["non_shiftable_load"]) for r in quarter[:4]] == [approx(b1_load(i) * 0.25) for i in range(4)]
    assert len(quarter) == 192 and len(hourly) == 48


def test_calendar_is_in_site_local_time_with_citylearn_conventions_across_dst(lab):
    rows = lab.rows("lab15", "B1.csv")
    # 2024-03-30 00:00 UTC is 02:00 EET on a Saturday: hour 3 (1..24), day_type 6.
    first = rows[0]
    calendar = (first["month"], first["hour"], first["minutes"], first["day_type"], first["daylight_savings_status"])
    assert calendar == ("3", "3", "0", "6", "0")
    # 2024-03-31 00:45 UTC = 02:45 EET; 01:00 UTC = 04:00 EEST: hour jumps 3 -> 5, DST flag 0 -> 1.
    assert (rows[99]["hour"], rows[99]["daylight_savings_status"]) == ("3", "0")
    assert (rows[100]["hour"], rows[100]["daylight_savings_status"]) == ("5", "1")
    # Local midnight (21:00 UTC in EEST) starts Monday: day_type follows local dates, not UTC ones.
    assert {r["day_type"] for r in rows[100:180]} == {"7"} and {r["day_type"] for r in rows[180:]} == {"1"}
    assert {int(r["hour"]) for r in rows} <= set(range(1, 25))


def test_short_gap_is_interpolated_and_long_gap_copies_the_previous_day(lab):
    b2 = lab.rows("lab15", "B2.csv")
    for i in B2_GAP:
        assert float(b2[i]["non_shiftable_load"]) == approx(b2_load(i) * 0.25)  # a ramp: linear is exact
    b10 = lab.rows("lab15", "B10.csv")
    for i in B10_GAP:
        assert float(b10[i]["non_shiftable_load"]) == approx(b10_load(i - 96) * 0.25)
        assert float(b10[i]["cooling_demand"]) == approx(0.25)
    assert all(r["non_shiftable_load"] != "" for r in b10)


def test_shared_files_have_every_column_and_coarse_prices_are_held(lab):
    weather = lab.rows("lab15", "weather.csv")
    assert len(weather[0]) == 16
    assert float(weather[0]["outdoor_dry_bulb_temperature"]) == approx(10.5)  # mean of B1 (10.0) and B2 (11.0)
    assert float(weather[0]["outdoor_dry_bulb_temperature_predicted_1"]) == approx(10.5 + 24 / 8)  # 6 h ahead
    prices = [float(r["electricity_pricing"]) for r in lab.rows("lab15", "pricing.csv")]
    assert prices[:28] == [0.1] * 28 and prices[28:32] == [0.3] * 4  # 07:00 UTC price held for the hour
    assert {r["carbon_intensity"] for r in lab.rows("lab15", "carbon_intensity.csv")} == {"0.4"}


def test_charger_csv_has_six_columns_citylearn_states_and_step_countdowns(lab):
    with open(os.path.join(lab.datasets, "lab15", "charger_B1_1.csv")) as handle:
        assert handle.readline().strip().split(",") == CHARGER_COLUMNS
    rows = lab.rows("lab15", "charger_B1_1.csv")
    first = ALICE["first"]
    for lead in range(1, 5):  # announced as incoming an hour ahead, counting down to arrival
        row = rows[first - lead]
        assert (row["electric_vehicle_charger_state"], row["electric_vehicle_id"]) == ("2", "alice")
        assert row["electric_vehicle_estimated_arrival_time"] == str(lead)
        assert float(row["electric_vehicle_estimated_soc_arrival"]) == approx(0.30)
    for i in range(first, ALICE["last"] + 1):  # planned departure 12:00 = step 48
        row = rows[i]
        assert (row["electric_vehicle_charger_state"], row["electric_vehicle_id"]) == ("1", "alice")
        assert row["electric_vehicle_departure_time"] == str(48 - i)
        assert float(row["electric_vehicle_required_soc_departure"]) == approx(0.8)
    assert rows[ALICE["last"] + 1]["electric_vehicle_charger_state"] == "3"
    for i in range(EV42["first"], EV42["last"] + 1):  # no plan given: actual departure after the last report
        assert rows[i]["electric_vehicle_id"] == "EV_42"
        assert rows[i]["electric_vehicle_departure_time"] == str(EV42["last"] + 1 - i)
        assert float(rows[i]["electric_vehicle_required_soc_departure"]) == approx(0.85)
    idle = lab.rows("lab15", "charger_B1_2.csv")
    assert {r["electric_vehicle_charger_state"] for r in idle} == {"3"} and len(idle) == 192


def test_schema_json_is_a_citylearn_schema_with_overrides_applied(lab):
    with open(os.path.join(lab.datasets, "lab15", "schema.json")) as handle:
        schema = json.load(handle)
    assert "structure" not in schema
    assert list(schema["buildings"]) == ["B1", "B2", "B10"]
    assert schema["seconds_per_time_step"] == 900 and schema["simulation_end_time_step"] == 191
    assert schema["central_agent"] is True and schema["random_seed"] == 7  # citylearn_configs
    b1 = schema["buildings"]["B1"]
    assert b1["energy_simulation"] == "B1.csv" and b1["weather"] == "weather.csv"
    assert b1["chargers"]["B1-C1"]["charger_simulation"] == "charger_B1_1.csv"
    assert b1["chargers"]["B1-C1"]["attributes"]["nominal_power"] == 7.4  # the site schema's own value
    assert b1["pv"]["attributes"]["generation_mode"] == "absolute"
    assert "electrical_storage" in schema["buildings"]["B2"]["inactive_actions"]
    assert set(schema["electric_vehicles_def"]) == {"alice", "EV_42"}
    for name in ("B1.csv", "weather.csv", "pricing.csv", "carbon_intensity.csv", "charger_B1_2.csv"):
        assert os.path.exists(os.path.join(lab.datasets, "lab15", name))


@pytest.mark.parametrize("name", ["lab15", "lab60"])
@pytest.mark.citylearn
def test_generated_dataset_loads_and_runs_to_the_end_in_citylearn(lab, citylearn_python, name):
    schema = os.path.join(lab.datasets, name, "schema.json")
    # -I keeps tests/ (whose http.py shadows the stdlib) off the venv's sys.path.
    done = subprocess.run([citylearn_python, "-I", os.path.join(HERE, "citylearn_check.py"), schema],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    steps = 192 if name == "lab15" else 48
    assert summary["time_steps"] == steps and summary["steps"] == steps - 1
    assert summary["buildings"] == ["B1", "B2", "B10"]
    assert summary["chargers"] == ["B1-C1", "B1-C2"] and summary["electric_vehicles"] == ["EV_42", "alice"]


def test_datasets_list_reports_metadata(lab):
    entries = {e["name"]: e for e in lab.client.get("/datasets").json()}
    entry = entries["lab60"]
    assert entry["site"] == LAB and entry["period"] == 60 and entry["description"] == "test"
    assert entry["from_ts"] == "2024-03-30T00:00:00Z" and entry["until_ts"] == "2024-04-01T00:00:00Z"
    assert entry["size"] > 0 and entry["created_at"].endswith("Z")
    assert not [n for n in entries if n.startswith(".")]


def test_download_streams_a_zip_of_the_folder_without_temp_files(lab):
    before = sorted(os.listdir(lab.datasets))
    with ThreadedServer(lab.app) as http:
        response = http.get("/dataset/download/lab60")
    assert response.status == 200 and response.headers["Content-Type"] == "application/zip"
    archive = zipfile.ZipFile(io.BytesIO(response.body))
    assert "lab60/schema.json" in archive.namelist()
    with open(os.path.join(lab.datasets, "lab60", "B1.csv"), "rb") as handle:
        assert archive.read("lab60/B1.csv") == handle.read()
    assert sorted(os.listdir(lab.datasets)) == before


def test_download_serves_a_plain_file_as_is(lab):
    with open(os.path.join(lab.datasets, "plain.zip"), "wb") as handle:
        handle.write(b"PK-not-really")
    response = lab.client.get("/dataset/download/plain.zip")
    assert response.status == 200 and response.body == b"PK-not-really"
    assert lab.client.delete("/dataset/plain.zip").status == 200


def test_existing_name_is_409_and_nothing_changes(lab):
    response = lab.client.post("/dataset", json={"name": "lab60", "site_id": LAB, "period": 60, **FULL_RANGE})
    assert response.status == 409


def test_delete_removes_the_dataset_and_its_status(lab):
    assert lab.build("doomed", period=60)["state"] == "ready"
    assert lab.client.delete("/dataset/doomed").status == 200
    assert not os.path.exists(os.path.join(lab.datasets, "doomed"))
    assert lab.client.get("/dataset/status/doomed").status == 404
    assert lab.client.delete("/dataset/doomed").status == 404


@pytest.mark.parametrize("path", ["/dataset/..", "/dataset/.builds", "/dataset/%2e%2e%2fetc", "/dataset/a%2fb"])
def test_delete_never_leaves_the_datasets_folder(lab, path):
    response = lab.client.delete(path)
    assert response.status in (400, 404), response
    assert os.path.isdir(os.path.join(lab.datasets, ".builds"))


@pytest.mark.parametrize("change, status", [
    ({"name": "../evil"}, 400), ({"name": "a/b"}, 400), ({"name": ".hidden"}, 400), ({"name": None}, 400),
    ({"site_id": "nosuchsite"}, 404), ({"site_id": "../x"}, 400),
    ({"from_ts": "2024-04-01T00:00:00Z", "until_ts": "2024-03-30T00:00:00Z"}, 400),
    ({"until_ts": "2024-03-30T00:00:00Z"}, 400), ({"from_ts": "yesterday"}, 400),
    ({"period": 0}, 400), ({"period": -15}, 400), ({"period": 100000}, 400), ({"period": 7}, 400),
    ({"period": "15"}, 400), ({"period": True}, 400), ({"until_ts": "2024-03-30T00:20:00Z"}, 400),
    ({"until_ts": "2124-03-30T00:00:00Z"}, 400), ({"citylearn_configs": [1]}, 400),
    ({"from_ts": "0001-01-01T00:00:00+05:00"}, 400), ({"until_ts": "9999-12-31T23:59:59-05:00"}, 400),
    ({"from_ts": "2020-01-01T00:00:00Z", "until_ts": "2020-01-02T00:00:00Z"}, 400),
])
def test_bad_build_requests_are_4xx_and_write_nothing(lab, change, status):
    before = sorted(os.listdir(lab.datasets))
    body = {"name": "bad-" + uuid.uuid4().hex[:6], "site_id": LAB, "period": 15, **FULL_RANGE, **change}
    response = lab.client.post("/dataset", json=body)
    assert response.status == status, response
    assert sorted(os.listdir(lab.datasets)) == before
    assert os.listdir(os.path.join(lab.datasets, ".staging")) == []


def test_empty_building_collection_is_400(lab, mongo_client):
    site = "e" + uuid.uuid4().hex[:8]
    mongo_client[site].building_A.insert_one({"timestamp": LAB_START, "non_shiftable_load": 1.0})
    mongo_client[site].schema.insert_one({"_id": "schema", "schema": {"buildings": {"A": {}, "EMPTY": {}}}})
    response = lab.client.post("/dataset", json={"name": "empty", "site_id": site, **FULL_RANGE})
    assert response.status == 400 and response.json()["buildings"] == ["EMPTY"]
    assert not os.path.exists(os.path.join(lab.datasets, "empty"))


def test_site_without_timezone_uses_utc_and_says_so(lab, mongo_client):
    site = "u" + uuid.uuid4().hex[:8]
    mongo_client[site].building_A.insert_many(
        [{"timestamp": LAB_START.replace(hour=h), "non_shiftable_load": 1.0} for h in range(4)])
    mongo_client[site].schema.insert_one({"_id": "schema", "schema": {"buildings": {"A": {}}}})
    status = lab.build("utc-site", site_id=site, period=60, from_ts="2024-03-30T00:00:00Z",
                       until_ts="2024-03-30T04:00:00Z")
    assert status["state"] == "ready" and any("UTC" in w for w in status["warnings"])
    assert lab.rows("utc-site", "A.csv")[0]["hour"] == "1"


def test_failed_build_leaves_no_partial_dataset_and_frees_the_name(lab, monkeypatch):
    def disk_full(folder, schema):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(opeva_spool.sitedata.citylearn, "write_schema", disk_full)
    status = lab.build("broken", period=60)
    assert status["state"] == "failed" and "No space left" in status["error"]
    assert not os.path.exists(os.path.join(lab.datasets, "broken"))
    assert os.listdir(os.path.join(lab.datasets, ".staging")) == []
    monkeypatch.undo()
    assert lab.build("broken", period=60)["state"] == "ready"


@pytest.mark.parametrize("configs, key", [
    ({"simulation_end_time_step": 8759}, "simulation_end_time_step"),  # what the original's form sends
    ({"simulation_end_time_step": 192}, "simulation_end_time_step"),  # 192 steps: the last is 191
    ({"simulation_start_time_step": 191}, "simulation_start_time_step"),
    ({"simulation_start_time_step": 100, "simulation_end_time_step": 50}, "simulation_end_time_step"),
    ({"simulation_end_time_step": True}, "simulation_end_time_step"),
    ({"simulation_end_time_step": None}, "simulation_end_time_step"),
    ({"simulation_start_time_step": None}, "simulation_start_time_step"),
    ({"episode_time_steps": 193}, "episode_time_steps"), ({"episode_time_steps": 0}, "episode_time_steps"),
    ({"episode_time_steps": "24"}, "episode_time_steps"),
    ({"simulation_end_time_step": 99, "episode_time_steps": 101}, "episode_time_steps"),
    ({"episode_time_steps": [[0, 500]]}, "episode_time_steps"), ({"episode_time_steps": [5]}, "episode_time_steps"),
    ({"root_directory": "/data/elsewhere"}, "root_directory"),
    ({"seconds_per_time_step": 3600}, "seconds_per_time_step"), ({"start_date": "2020-01-01"}, "start_date"),
    ({"central_agent": "yes"}, "central_agent"), ({"random_seed": -1}, "random_seed"),
    ({"buildings": {"B99": {}}}, "buildings.B99"), ({"buildings": {"B1": 3}}, "buildings.B1"),
    ({"buildings": {"B1": {"energy_simulation": "other.csv"}}}, "buildings.B1.energy_simulation"),
    ({"buildings": []}, "buildings"), ({"agent": "RBCAgent"}, "agent"),
    ({"observations": {"hour": True}}, "observations"), ({"electric_vehicles_def": {"alice": 1}},
                                                         "electric_vehicles_def"),
])
def test_citylearn_configs_citylearn_would_refuse_are_400_naming_the_key_and_build_nothing(lab, configs, key):
    before = sorted(os.listdir(lab.datasets))
    body = {"name": "cfg-" + uuid.uuid4().hex[:6], "site_id": LAB, "period": 15, **FULL_RANGE,
            "citylearn_configs": configs}
    response = lab.client.post("/dataset", json=body)
    assert response.status == 400, response
    error = response.json()
    assert error["field"] == f"citylearn_configs.{key}" and f"citylearn_configs.{key}" in error["detail"]
    assert sorted(os.listdir(lab.datasets)) == before


@pytest.fixture(scope="module")
def windowed(lab):
    """A dataset whose citylearn_configs narrow the simulation and split it into episodes."""
    configs = {"simulation_start_time_step": 4, "simulation_end_time_step": 99, "episode_time_steps": 48,
               "root_directory": None, "seconds_per_time_step": 900, "start_date": "2024-03-30"}
    status = lab.build("windowed", citylearn_configs=configs)
    assert status["state"] == "ready", status
    return os.path.join(lab.datasets, "windowed", "schema.json")


def test_citylearn_configs_that_fit_the_dataset_are_written_into_its_schema(windowed):
    with open(windowed) as handle:
        schema = json.load(handle)
    assert (schema["simulation_start_time_step"], schema["simulation_end_time_step"]) == (4, 99)
    assert schema["episode_time_steps"] == 48 and schema["root_directory"] is None


@pytest.mark.citylearn
def test_citylearn_runs_an_episode_of_a_dataset_with_accepted_configs(windowed, citylearn_python):
    done = subprocess.run([citylearn_python, "-I", os.path.join(HERE, "citylearn_check.py"), windowed],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads(done.stdout.strip().splitlines()[-1])
    assert summary["time_steps"] == 48 and summary["steps"] == 47  # one episode of episode_time_steps


@pytest.mark.citylearn
@pytest.mark.parametrize("override, runs", [({}, True), ({"simulation_end_time_step": 8759}, False),
                                            ({"episode_time_steps": 500}, False),
                                            ({"simulation_end_time_step": None}, False)])
def test_what_the_check_refuses_citylearn_would_refuse(lab, citylearn_python, tmp_path, override, runs):
    """The refusals above are CityLearn's own: the same override written into a copy of a built dataset
    fails there (the unchanged copy runs)."""
    folder = shutil.copytree(os.path.join(lab.datasets, "lab15"), tmp_path / "lab15")
    with open(folder / "schema.json") as handle:
        schema = json.load(handle)
    schema.update(override)
    with open(folder / "schema.json", "w") as handle:
        json.dump(schema, handle)
    check = [citylearn_python, "-I", os.path.join(HERE, "citylearn_check.py"), str(folder / "schema.json")]
    done = subprocess.run(check, capture_output=True, text=True, timeout=300)
    assert (done.returncode == 0) == runs, done.stderr[-2000:]
