"""Sites, real-time data, dates available and site schemas against a real nx-27017 over TCP."""

import datetime as dt
import time
import urllib.parse
import uuid

import pytest

import opeva_spool.api.sites
from opeva_spool.api.app import Context, make_app
from opeva_spool.settings import Settings
from tests.clients import ThreadedServer, WsgiClient, free_port
from tests.mongo_support import LAB, LAB_SAMPLES, LAB_SCHEMA, LAB_START, SAMPLE

pytestmark = pytest.mark.mongo


def make_client(tmp_path, mongo_uri, **settings):
    settings = Settings(shared_root=str(tmp_path), mongo_uri=mongo_uri, **settings)
    app = make_app(Context(settings), [opeva_spool.api.sites])
    return WsgiClient(app)


@pytest.fixture
def client(tmp_path, mongo_uri, lab_site):
    return make_client(tmp_path, mongo_uri)


@pytest.fixture
def fresh_site():
    return "s" + uuid.uuid4().hex[:10]


def test_sites_lists_site_databases_without_system_databases(client):
    response = client.get("/sites")
    assert response.status == 200
    sites = response.json()["sites"]
    assert LAB in sites
    assert not {"admin", "local", "config"} & set(sites)


def test_energy_communities_is_the_site_list_under_the_successors_name(client):
    assert client.get("/energy-communities").json() == client.get("/sites").json()


def test_unconfigured_mongo_answers_503_json(tmp_path):
    response = make_client(tmp_path, "").get("/sites")
    assert response.status == 503
    assert "mongo_uri" in response.json()["detail"]


def test_dead_mongo_answers_503_within_the_timeout_not_a_hang(tmp_path):
    client = make_client(tmp_path, f"mongodb://127.0.0.1:{free_port()}/", mongo_timeout_ms=300)
    started = time.monotonic()
    for path in ("/sites", "/energy-communities", "/real-time-data/lab", "/historical-data/lab?limit=5",
                 "/schema/lab", "/dataset/dates-available/lab"):
        response = client.get(path)
        assert response.status == 503, path
        assert response.json()["error"] == "unavailable"
    assert time.monotonic() - started < 4


def totals(response, header="X-Collection-Totals"):
    return {name: int(value) for name, value in urllib.parse.parse_qsl(response.headers[header])}


def test_real_time_data_answers_the_originals_shape_filtered_by_minutes_oldest_first(client, mongo_client,
                                                                                      fresh_site):
    now = dt.datetime.now(dt.timezone.utc)
    db = mongo_client[fresh_site]
    db.building_X.insert_many([
        {"timestamp": now - dt.timedelta(minutes=5), "non_shiftable_load": 1.0},
        {"timestamp": now - dt.timedelta(minutes=30), "non_shiftable_load": 2.0},
        {"timestamp": now - dt.timedelta(minutes=120), "non_shiftable_load": 3.0},
    ])
    db.pricing.insert_one({"timestamp": now - dt.timedelta(minutes=1), "electricity_pricing": 0.2})
    response = client.get(f"/real-time-data/{fresh_site}?minutes=60")
    body = response.json()
    assert set(body) == {"building_X", "pricing"}  # each top-level key a collection, each value a list
    assert [d["non_shiftable_load"] for d in body["building_X"]] == [2.0, 1.0]  # in time order, 120 min left out
    assert isinstance(body["building_X"][0]["_id"], str) and len(body["building_X"][0]["_id"]) == 24
    assert body["building_X"][0]["timestamp"].endswith("Z")
    assert totals(response) == {"building_X": 2, "pricing": 1} and response.headers["X-Total-Count"] == "3"
    everything = client.get(f"/real-time-data/{fresh_site}")
    assert [d["non_shiftable_load"] for d in everything.json()["building_X"]] == [3.0, 2.0, 1.0]
    assert totals(everything)["building_X"] == 3


def test_real_time_data_without_offset_is_the_newest_page_and_offset_pages_from_the_oldest(client):
    stamps = [d["timestamp"] for d in client.get(f"/real-time-data/{LAB}?limit={LAB_SAMPLES}").json()["building_B1"]]
    assert stamps == sorted(stamps) and len(stamps) == LAB_SAMPLES
    tail = client.get(f"/real-time-data/{LAB}?limit=10")
    assert [d["timestamp"] for d in tail.json()["building_B1"]] == stamps[-10:]
    assert totals(tail)["building_B1"] == LAB_SAMPLES
    assert totals(tail, "X-Collection-Offsets")["building_B1"] == LAB_SAMPLES - 10
    pages = [client.get(f"/real-time-data/{LAB}?limit=50&offset={offset}").json()["building_B1"]
             for offset in range(0, LAB_SAMPLES, 50)]
    assert [d["timestamp"] for page in pages for d in page] == stamps  # every document once, in order
    past_the_end = client.get(f"/real-time-data/{LAB}?limit=10&offset={LAB_SAMPLES}")
    assert past_the_end.json()["building_B1"] == [] and totals(past_the_end)["building_B1"] == LAB_SAMPLES


def test_real_time_data_envelope_only_on_request(client):
    body = client.get(f"/real-time-data/{LAB}?limit=10&offset=20&envelope=1").json()
    assert body["site"] == LAB and body["limit"] == 10 and body["since"] is None
    b1 = body["collections"]["building_B1"]
    assert b1["total"] == LAB_SAMPLES and b1["offset"] == 20 and b1["has_more"]
    assert b1["documents"][0]["timestamp"] == "2024-03-30T05:00:00Z"  # the 21st sample, 15 min apart
    assert "collections" not in client.get(f"/real-time-data/{LAB}?limit=1&envelope=0").json()


@pytest.mark.parametrize("query", ["minutes=0", "minutes=-5", "minutes=99999999", "minutes=abc", "limit=0",
                                   "limit=100000", "offset=-1", "offset=x", "envelope=maybe"])
def test_real_time_data_rejects_absurd_query_values(client, query):
    response = client.get(f"/real-time-data/{LAB}?{query}")
    assert response.status == 400, response
    assert response.json()["error"] == "bad_request"


def test_unknown_or_invalid_site_is_404_or_400(client):
    assert client.get("/real-time-data/nosuchsite").status == 404
    assert client.get("/dataset/dates-available/nosuchsite").status == 404
    assert client.get("/real-time-data/admin").status == 400
    assert client.get("/real-time-data/..%2Fetc").status in (400, 404)
    assert client.get("/real-time-data/a.b").status == 400


def test_dates_available_sorts_on_timestamp_not_insertion_order(client, mongo_client, fresh_site):
    db = mongo_client[fresh_site]
    # Inserted newest first: ordering by _id would swap oldest and newest.
    db.building_Y.insert_many([
        {"timestamp": dt.datetime(2024, 5, 2, tzinfo=dt.timezone.utc)},
        {"timestamp": dt.datetime(2024, 5, 3, tzinfo=dt.timezone.utc)},
        {"timestamp": dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc)},
        {"note": "no timestamp"},
    ])
    assert client.get(f"/dataset/dates-available/{fresh_site}").json() == [{
        "installation": "building_Y", "oldest_record": "2024-05-01T00:00:00Z", "newest_record": "2024-05-03T00:00:00Z",
    }]


def test_dates_available_of_the_lab_covers_each_installation(client):
    rows = {row["installation"]: row for row in client.get(f"/dataset/dates-available/{LAB}").json()}
    assert set(rows) == {"building_B1", "building_B2", "building_B10", "pricing"}
    last = (LAB_START + (LAB_SAMPLES - 1) * SAMPLE).isoformat().replace("+00:00", "Z")
    assert rows["building_B1"]["oldest_record"] == "2024-03-30T00:00:00Z"
    assert rows["building_B1"]["newest_record"] == last


def test_schema_create_on_an_existing_database_then_409_only_for_a_second_schema(client, mongo_client, fresh_site):
    mongo_client[fresh_site].building_A.insert_one({"timestamp": LAB_START})  # data before any schema
    schema = {"timezone": "Europe/Nicosia", "buildings": {"A": {"include": True}}}
    assert client.get(f"/schema/{fresh_site}").status == 404
    assert client.post("/schema/create", json={"site": fresh_site, "schema": schema}).status == 200
    assert client.get(f"/schema/{fresh_site}").json() == schema
    again = client.post("/schema/create", json={"site": fresh_site, "schema": schema})
    assert again.status == 409
    stored = mongo_client[fresh_site].schema.find_one({"_id": "schema"})
    assert stored["schema"] == schema


def test_schema_update_replaces_and_404s_without_a_schema(client, fresh_site):
    schema = {"buildings": {"A": {}}}
    assert client.put(f"/schema/update/{fresh_site}", json={"schema": schema}).status == 404
    client.post("/schema/create", json={"site": fresh_site, "schema": schema})
    changed = {"buildings": {"A": {}, "B": {"chargers": {"B-1": {}}}}}
    assert client.put(f"/schema/update/{fresh_site}", json={"schema": changed}).status == 200
    assert client.get(f"/schema/{fresh_site}").json() == changed


@pytest.mark.parametrize("schema", [
    None, [], {}, {"buildings": {}}, {"buildings": []}, {"structure": {"A": {}}},
    {"buildings": {"../x": {}}}, {"buildings": {"A": 1}}, {"buildings": {"A": {"chargers": []}}},
    {"buildings": {"A": {"chargers": {"c/1": {}}}}}, {"buildings": {"A": {}}, "timezone": "Mars/Olympus"},
    {"buildings": {"A": {}}, "holidays": ["not a date"]}, {"buildings": {"A": {"$set": 1}}},
])
def test_schema_with_a_bad_shape_is_rejected_and_not_stored(client, mongo_client, fresh_site, schema):
    response = client.post("/schema/create", json={"site": fresh_site, "schema": schema})
    assert response.status == 400, response
    assert fresh_site not in mongo_client.list_database_names()


@pytest.mark.parametrize("site", ["../etc", "a/b", "admin", "", None, "x" * 80])
def test_schema_create_rejects_bad_site_names(client, site):
    response = client.post("/schema/create", json={"site": site, "schema": LAB_SCHEMA})
    assert response.status == 400


def test_routes_work_over_real_http(tmp_path, mongo_uri, lab_site):
    app = make_app(Context(Settings(shared_root=str(tmp_path), mongo_uri=mongo_uri)), [opeva_spool.api.sites])
    with ThreadedServer(app) as http:
        assert LAB in http.get("/sites").json()["sites"]
        assert http.get(f"/schema/{LAB}").json()["timezone"] == LAB_SCHEMA["timezone"]
        missing = http.get("/schema/nosuchsite")
        assert missing.status == 404 and missing.headers["Content-Type"].startswith("application/json")
