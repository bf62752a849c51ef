"""GET /historical-data/{site}: bounded pages per collection and bucketed means, against a real nx-27017."""

import datetime as dt
import urllib.parse
import uuid

import pytest

import opeva_spool.api.sites
from opeva_spool.api.app import Context, make_app
from opeva_spool.settings import Settings
from tests.clients import ThreadedServer, WsgiClient
from tests.mongo_support import B2_GAP, LAB, LAB_SAMPLES, LAB_START, SAMPLE, b1_load, b1_temperature, b2_load

pytestmark = pytest.mark.mongo

UTC = dt.timezone.utc


@pytest.fixture
def client(tmp_path, mongo_uri, lab_site):
    return WsgiClient(make_app(Context(Settings(shared_root=str(tmp_path), mongo_uri=mongo_uri)),
                               [opeva_spool.api.sites]))


def history(client, **query):
    return client.get(f"/historical-data/{LAB}?{urllib.parse.urlencode(query)}")


def totals(response):
    return {name: int(value) for name, value in urllib.parse.parse_qsl(response.headers["X-Collection-Totals"])}


def stamp(i):
    return (LAB_START + i * SAMPLE).isoformat().replace("+00:00", "Z")


def test_limit_is_required_and_bounds_each_collection(client):
    missing = client.get(f"/historical-data/{LAB}")
    assert missing.status == 400 and "limit" in missing.json()["detail"]
    response = history(client, limit=3)
    body = response.json()
    assert set(body) == {"building_B1", "building_B2", "building_B10", "pricing"}
    assert [d["timestamp"] for d in body["building_B1"]] == [stamp(0), stamp(1), stamp(2)]  # oldest first
    assert totals(response)["building_B1"] == LAB_SAMPLES


def test_bounds_are_iso_from_inclusive_until_exclusive_with_offsets_respected(client):
    six = history(client, limit=100, from_ts="2024-03-30T06:00:00Z", until_ts="2024-03-30T07:00:00Z").json()
    assert [d["timestamp"] for d in six["building_B1"]] == [stamp(i) for i in range(24, 28)]
    same = history(client, limit=100, from_ts="2024-03-30T09:00:00+03:00", until_ts="2024-03-30T07:00:00").json()
    assert same["building_B1"] == six["building_B1"]  # an offset is honoured; a bare time is UTC
    assert [d["electricity_pricing"] for d in six["pricing"]] == [0.1]


def test_offset_pages_through_a_range_and_totals_come_in_headers(client):
    query = {"from_ts": "2024-03-30T00:00:00Z", "until_ts": "2024-03-31T00:00:00Z"}
    first = history(client, limit=40, **query)
    second = history(client, limit=40, offset=40, **query)
    assert totals(first) == totals(second)
    assert totals(first)["building_B1"] == 96 and totals(first)["building_B2"] == 96 - len(B2_GAP)
    assert [d["timestamp"] for d in second.json()["building_B1"]] == [stamp(i) for i in range(40, 80)]
    assert int(first.headers["X-Total-Count"]) == sum(totals(first).values())


def test_buckets_hold_the_mean_of_each_numeric_field_and_how_many_documents_they_average(client):
    response = history(client, limit=1000, granularity_minutes=60)
    body = response.json()
    assert totals(response)["building_B1"] == LAB_SAMPLES // 4
    first = body["building_B1"][0]
    assert first["timestamp"] == "2024-03-30T00:00:00Z" and first["_count"] == 4
    assert first["non_shiftable_load"] == pytest.approx(sum(b1_load(i) for i in range(4)) / 4)
    assert first["indoor_dry_bulb_temperature"] == pytest.approx(sum(b1_temperature(i) for i in range(4)) / 4)
    assert "charging_sessions" not in first and "_id" not in first  # only numbers are averaged
    gap_hour = next(b for b in body["building_B2"] if b["timestamp"] == "2024-03-30T10:00:00Z")
    present = [i for i in range(40, 44) if i not in B2_GAP]
    assert gap_hour["_count"] == len(present)
    assert gap_hour["non_shiftable_load"] == pytest.approx(sum(b2_load(i) for i in present) / len(present))
    days = history(client, limit=10, granularity_minutes=1440).json()["building_B1"]
    assert [(d["timestamp"], d["_count"]) for d in days] == [("2024-03-30T00:00:00Z", 96), ("2024-03-31T00:00:00Z", 96)]


def test_buckets_page_like_documents_and_respect_the_bounds(client):
    response = history(client, limit=5, offset=10, granularity_minutes=60, from_ts="2024-03-30T00:00:00Z",
                       until_ts="2024-03-31T00:00:00Z")
    assert [b["timestamp"] for b in response.json()["building_B1"]] == [stamp(4 * h) for h in range(10, 15)]
    assert totals(response)["building_B1"] == 24


def test_buckets_are_aligned_on_the_epoch_and_skip_non_numbers(client, mongo_client):
    site = "h" + uuid.uuid4().hex[:8]
    start = dt.datetime(2024, 1, 1, 0, 3, tzinfo=UTC)
    mongo_client[site].meter.insert_many([
        {"timestamp": start + dt.timedelta(minutes=m), "power": float(m), "on": True, "label": "x", "count": m}
        for m in range(10)
    ])
    body = client.get(f"/historical-data/{site}?limit=10&granularity_minutes=7").json()["meter"]
    # 2024-01-01T00:01Z is minute 28401121 = 7 x 4057303 of the epoch: buckets start at 00:01 and 00:08,
    # not at the first document (00:03).
    assert (start.timestamp() // 60 - 2) % 7 == 0
    assert [(b["timestamp"], b["_count"]) for b in body] == [("2024-01-01T00:01:00Z", 5), ("2024-01-01T00:08:00Z", 5)]
    assert body[0]["power"] == pytest.approx(2.0) and body[1]["count"] == pytest.approx(7.0)
    assert "on" not in body[0] and "label" not in body[0]


def test_minutes_counts_back_from_now_and_cannot_be_combined_with_from_ts(client, mongo_client):
    site = "m" + uuid.uuid4().hex[:8]
    now = dt.datetime.now(UTC)
    mongo_client[site].meter.insert_many([{"timestamp": now - dt.timedelta(minutes=m), "power": m} for m in (1, 90)])
    assert [d["power"] for d in client.get(f"/historical-data/{site}?limit=5&minutes=60").json()["meter"]] == [1]
    both = client.get(f"/historical-data/{site}?limit=5&minutes=60&from_ts=2024-01-01T00:00:00Z")
    assert both.status == 400 and both.json()["field"] == "minutes"


def test_envelope_on_request(client):
    body = history(client, limit=2, granularity_minutes=60, until_ts="2024-03-31T00:00:00Z", envelope="true").json()
    assert body["until"] == "2024-03-31T00:00:00Z" and body["granularity_minutes"] == 60
    assert body["collections"]["building_B1"]["total"] == 24 and body["collections"]["building_B1"]["has_more"]


@pytest.mark.parametrize("query", [
    "limit=", "limit=0", "limit=x", "limit=100000", "limit=5&offset=-1", "limit=5&from_ts=yesterday",
    "limit=5&until_ts=2024-13-01", "limit=5&from_ts=2024-03-31T00:00:00Z&until_ts=2024-03-30T00:00:00Z",
    "limit=5&from_ts=0001-01-01T00:00:00%2B05:00", "limit=5&until_ts=9999-12-31T23:59:59-05:00",
    "limit=5&granularity_minutes=0", "limit=5&granularity_minutes=1.5", "limit=5&minutes=0", "limit=5&envelope=2",
])
def test_bad_query_values_are_400_json(client, query):
    response = client.get(f"/historical-data/{LAB}?{query}")
    assert response.status == 400, response
    assert response.json()["error"] == "bad_request"


def test_unknown_site_is_404_and_a_bad_name_400(client):
    assert client.get("/historical-data/nosuchsite?limit=5").status == 404
    assert client.get("/historical-data/admin?limit=5").status == 400


def test_headers_reach_a_client_over_real_http(tmp_path, mongo_uri, lab_site):
    app = make_app(Context(Settings(shared_root=str(tmp_path), mongo_uri=mongo_uri)), [opeva_spool.api.sites])
    with ThreadedServer(app) as http:
        response = http.get(f"/historical-data/{LAB}?limit=1&granularity_minutes=15")
        assert response.status == 200 and totals(response)["building_B1"] == LAB_SAMPLES
        assert len(response.json()["building_B1"]) == 1
