"""The event export under a steady stream: one run exports what was in the log when it started,
stops within its time budget, and the runs together export every event exactly once."""

from __future__ import annotations

import io
import threading
import time
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq
from pipeline_helpers import click
from zerorec import tasks
from zerorec.ingest import BehaviorIngest
from zerorec.storage.bus_sqlite import SqliteEventBus
from zerorec.storage.objects_local import LocalObjectStore

TOPIC = "soak.behavior"


def _exported_ids(store: LocalObjectStore, keys: list[str]) -> list[str]:
    ids: list[str] = []
    for key in keys:
        ids += pq.read_table(io.BytesIO(store.get(key))).column("event_id").to_pylist()
    return ids


def _export(bus: SqliteEventBus, store: LocalObjectStore, **kw: Any) -> dict[str, Any]:
    return tasks.export_events(bus, store, TOPIC, group="export", prefix="exports/events", **kw)


def test_export_ends_under_a_steady_stream_and_misses_nothing(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.sqlite3")
    store = LocalObjectStore(tmp_path / "objects")
    ingest = BehaviorIngest(bus, TOPIC)
    ingest.accept_payloads([click(f"u{n}", f"i{n}") for n in range(300)])
    stop = threading.Event()
    produced = [300]

    def stream() -> None:  # a new event every few ms while the export runs (30 s at most)
        n, end = 0, time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < end:
            ingest.accept_payloads([click(f"s{n}", "i1")])
            produced[0] += 1
            n += 1
            time.sleep(0.003)

    producer = threading.Thread(target=stream, daemon=True)
    producer.start()
    t0 = time.monotonic()
    try:
        first = _export(bus, store)
    finally:
        took = time.monotonic() - t0
        stop.set()
        producer.join(5)
    # Without the start cut-off the log is never idle and the run would read until MAX_RECORDS.
    assert took < tasks.EXPORT_BUDGET_S, f"export ran {took:.1f} s under a steady stream"
    assert first["complete"] is True and first["exported"] >= 300
    second = _export(bus, store)  # the stream has stopped: the rest, and nothing twice
    ids = _exported_ids(store, first["objects"] + second["objects"])
    assert len(ids) == len(set(ids)) == produced[0]


def test_export_budget_stops_a_run_and_the_next_goes_on(tmp_path: Path) -> None:
    bus = SqliteEventBus(tmp_path / "bus.sqlite3")
    store = LocalObjectStore(tmp_path / "objects")
    BehaviorIngest(bus, TOPIC).accept_payloads([click(f"u{n}", f"i{n}") for n in range(50)])
    cut = _export(bus, store, budget_s=0.0)
    assert cut["complete"] is False and cut["exported"] == 0
    rest = _export(bus, store)
    assert rest["complete"] is True and rest["exported"] == 50
    assert len(set(_exported_ids(store, rest["objects"]))) == 50
    assert _export(bus, store)["exported"] == 0
