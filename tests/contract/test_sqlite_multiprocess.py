"""The SQLite embedded backends are shared by separate processes (the local setup's whole point).

Each test starts real child processes (`python -c`) on one SQLite file; nothing is shared through
Python objects.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from zerorec.storage.bus import OutgoingRecord
from zerorec.storage.bus_sqlite import SqliteEventBus, partition_for
from zerorec.storage.kv import ZTop
from zerorec.storage.kv_sqlite import SqliteKVStore


def _spawn(code: str, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _result(proc: subprocess.Popen[str], timeout_s: float = 60.0) -> dict:
    out, err = proc.communicate(timeout=timeout_s)
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


_APPLY = """
    import json, sys, time
    from pathlib import Path
    from zerorec.storage.kv import ZIncr
    from zerorec.storage.kv_sqlite import SqliteKVStore

    path, go, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
    kv = SqliteKVStore(path)
    while not go.exists():
        time.sleep(0.01)
    ops = lambda i: [ZIncr("pop", "x", 1), ZIncr("pop", str(i), 1)]
    applied = [i for i in range(n) if kv.apply_once(f"evt-{i}", ops(i))]
    print(json.dumps({"applied": applied}))
"""


def test_apply_once_from_two_processes_applies_each_token_once(tmp_path: Path) -> None:
    db, go, n = tmp_path / "kv.sqlite3", tmp_path / "go", 300
    SqliteKVStore(db).close()  # create the schema first, so both children race only on the tokens
    procs = [_spawn(_APPLY, str(db), str(go), str(n)) for _ in range(2)]
    time.sleep(0.5)  # let both import and open the file
    go.touch()
    a, b = (_result(p)["applied"] for p in procs)
    assert sorted(a + b) == list(range(n))  # every token applied by exactly one process
    kv = SqliteKVStore(db)
    top = kv.read([ZTop("pop", n + 1)])[0]
    kv.close()
    assert top[0] == ("x", float(n))
    assert all(score == 1.0 for _, score in top[1:]) and len(top) == n + 1


_PRODUCE = """
    import json, sys
    from zerorec.storage.bus import OutgoingRecord
    from zerorec.storage.bus_sqlite import SqliteEventBus

    bus = SqliteEventBus(sys.argv[1])
    bus.ensure_topics(["behavior"], partitions=3)
    for batch in range(10):
        bus.publish("behavior", [
            OutgoingRecord(value=f"{u}:{batch}".encode(), key=f"user-{u}".encode()) for u in range(30)
        ])
    print(json.dumps({"sent": 300}))
"""

_CONSUME = """
    import json, sys, time
    from zerorec.storage.bus_sqlite import SqliteEventBus

    path, want, commit_upto = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    bus = SqliteEventBus(path, session_timeout_s=1.0, heartbeat_s=0.2)
    c = bus.consumer(["behavior"], "consumers")
    got = []
    deadline = time.monotonic() + 30
    while len(got) < want and time.monotonic() < deadline:
        got += c.poll(max_records=50, timeout_s=0.5)
    c.commit(got[:commit_upto])
    print(json.dumps({"got": [[r.partition, r.offset, r.key.decode(), r.value.decode()] for r in got]}),
          flush=True)
    if commit_upto < len(got):
        time.sleep(60)  # "hang" until killed: no close, so the group must notice the missing heartbeats
    c.close()
"""


def test_producer_and_consumer_processes_share_one_bus(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite3"
    SqliteEventBus(db).close()
    consumer = _spawn(_CONSUME, str(db), "300", "300")  # starts first: waits for records
    producer = _spawn(_PRODUCE, str(db))
    assert _result(producer) == {"sent": 300}
    got = _result(consumer)["got"]
    assert len(got) == 300
    assert len({(p, o) for p, o, _, _ in got}) == 300
    for p, _, key, _ in got:
        assert p == partition_for(key.encode(), 3)  # a key always lands on the same partition
    by_user: dict[str, list[int]] = {}
    for _, _, key, value in got:
        by_user.setdefault(key, []).append(int(value.split(":")[1]))
    assert all(batches == list(range(10)) for batches in by_user.values())  # per-key order holds


def test_crashed_consumer_process_hands_over_uncommitted_records(tmp_path: Path) -> None:
    db = tmp_path / "bus.sqlite3"
    bus = SqliteEventBus(db, session_timeout_s=1.0, heartbeat_s=0.2)
    bus.ensure_topics(["behavior"], partitions=2)
    bus.publish("behavior", [OutgoingRecord(value=str(i).encode(), key=str(i).encode()) for i in range(40)])
    first = _spawn(_CONSUME, str(db), "40", "10")  # commits its first 10 records, then hangs
    line = first.stdout.readline() if first.stdout else ""
    got_first = json.loads(line)["got"]
    assert len(got_first) == 40
    first.send_signal(signal.SIGKILL)
    first.wait(10)
    start = time.monotonic()
    c = bus.consumer(["behavior"], "consumers")
    rest: list = []
    while len(rest) < 30 and time.monotonic() - start < 20:
        rest += c.poll(max_records=100, timeout_s=0.5)
    took = time.monotonic() - start
    c.commit(rest)
    c.close()
    bus.close()
    committed = {(p, o) for p, o, _, _ in got_first[:10]}
    assert {(r.partition, r.offset) for r in rest} == {(p, o) for p, o, _, _ in got_first} - committed
    assert took < 5.0, f"handover took {took:.1f}s with a 1 s session timeout"
