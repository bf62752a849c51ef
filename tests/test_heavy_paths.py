"""The dataset build's and the log tail's fast paths give what the plain ones gave, at a year's or a gigabyte's size."""

import datetime as dt
import io
import os
import uuid

import numpy as np
import pandas as pd
import pytest

from opeva_spool.logs import LOG_CHUNK, tail_offset
from opeva_spool.sitedata import citylearn

UTC = dt.timezone.utc


def test_csv_files_are_the_bytes_pandas_to_csv_writes(tmp_path):
    frame = pd.DataFrame({
        "month": [1, 2, 3],
        "load": [0.95, np.nan, 1 / 3],
        "id": ["alice", "", "EV_42"],
        "countdown": pd.array([3, None, 0], dtype="Int64"),
        "soc": [np.nan, np.nan, np.nan],
        "big": [1e12, -2.5e-7, 0.0],
    })
    for columns in (list(frame.columns), ["load"], ["countdown", "id"]):
        expected = io.StringIO()
        frame[columns].to_csv(expected, index=False, float_format=citylearn.CSV_FLOAT)
        citylearn.write_csv(str(tmp_path), "out.csv", frame[columns])
        with open(tmp_path / "out.csv", newline="", encoding="utf-8") as handle:
            assert handle.read() == expected.getvalue()


def _session(ev_id, start, first, last, departure=None):
    session = citylearn.Session(ev_id)
    for step in range(first, last + 1):
        session.reports.append((start + dt.timedelta(minutes=15 * step), 0.5, departure, None))
    return session


def test_charger_steps_belong_to_one_session_when_a_later_arrival_overlaps_an_earlier_stay():
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    long_stay, short_stay, late = (_session("a", start, 10, 30), _session("b", start, 12, 14),
                                   _session("c", start, 20, 25))
    frame = citylearn.charger_frame([long_stay, short_stay, late], start, 15, 40)
    state = frame["electric_vehicle_charger_state"].tolist()
    assert state[10:12] == [1, 1] and state[16:20] == [2] * 4 and state[20:26] == [1] * 6 and state[26:31] == [1] * 5
    incoming = frame.iloc[16:20]
    assert incoming["electric_vehicle_id"].tolist() == ["c"] * 4
    assert incoming["electric_vehicle_estimated_arrival_time"].tolist() == [4, 3, 2, 1]
    assert incoming["electric_vehicle_departure_time"].isna().all()
    assert incoming["electric_vehicle_required_soc_departure"].isna().all()
    connected = frame.iloc[20:26]
    assert connected["electric_vehicle_estimated_arrival_time"].isna().all()
    assert connected["electric_vehicle_estimated_soc_arrival"].isna().all()
    assert connected["electric_vehicle_departure_time"].tolist() == [6, 5, 4, 3, 2, 1]
    assert frame["electric_vehicle_departure_time"].dtype == "Int64" and state[:6] == [3] * 6


@pytest.mark.parametrize("lines", [1, 2, 999, 1000, 5000, 20000])
def test_tail_offset_finds_the_last_lines_of_a_log_many_blocks_long(tmp_path, lines):
    path = tmp_path / "log"
    rows = [f"{'y' * (i % 150)} {i}\n".encode() for i in range(20000)]
    path.write_bytes(b"".join(rows))
    assert os.path.getsize(path) > 20 * LOG_CHUNK
    with open(path, "rb") as handle:
        handle.seek(tail_offset(handle, lines))
        assert handle.read() == b"".join(rows[-lines:])


@pytest.mark.mongo
def test_a_building_whose_data_starts_late_in_a_long_range_is_found_and_one_without_any_is_not(mongo_client):
    from opeva_spool.sitedata.plan import has_data

    collection = mongo_client["h" + uuid.uuid4().hex[:8]]["building_A"]
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    end = start + dt.timedelta(days=366)
    collection.insert_one({"timestamp": end - dt.timedelta(minutes=15), "non_shiftable_load": 1.0})
    assert has_data(collection, start, end)
    assert not has_data(collection, start, end - dt.timedelta(minutes=15))
    assert not has_data(collection, end, end + dt.timedelta(days=1))
    last_day = dt.datetime(9999, 12, 31, 23, 0, tzinfo=UTC)  # doubling windows stop at the end, never past it
    assert not has_data(collection, last_day - dt.timedelta(days=3000), last_day)


def test_a_log_read_without_follow_is_sent_as_the_file_it_is_then_with_its_length(serving):
    server, _, http = serving()
    job_id = http.post("/run-simulation", json={"command": "true", "target_host": "gpu-a"}).json()["job_id"]
    assert http.get(f"/logs/{job_id}").body == b""  # no log yet: an empty body, not a JSON "[]"
    path = server.spool.folder(job_id).log
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rows = [f"{i:06d} {'z' * (i % 300)}\n".encode() for i in range(3000)]
    with open(path, "wb") as handle:
        handle.write(b"".join(rows))
    whole = http.get(f"/logs/{job_id}")
    assert whole.status == 200 and whole.body == b"".join(rows)
    assert int(whole.headers["Content-Length"]) == os.path.getsize(path)
    tail = http.get(f"/logs/{job_id}?tail=2")
    assert tail.body == b"".join(rows[-2:]) and int(tail.headers["Content-Length"]) == len(tail.body)
    assert tail.headers["Content-Type"].startswith("text/plain")
