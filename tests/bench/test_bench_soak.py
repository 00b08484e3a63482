"""zerorec bench soak, short (about a minute of load, two faults), on Kafka, Redis and S3 of its own:
an honest pass/fail on lost, duplicated and errors; plus the pure parts (fault plan, RSS figures)."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
from zerorec.bench_soak import (
    ALL_FAULTS,
    Sample,
    Soak,
    fault_plan,
    main,
    parse_faults,
    recovered_at,
    rss_figures,
)


def test_fault_plan_spreads_faults_between_warm_up_and_the_last_fifth() -> None:
    plan = fault_plan(["kill:recall", "redis-restart", "s3-down"], minutes=10, warmup_s=60)
    assert [name for _, name in plan] == ["kill:recall", "redis-restart", "s3-down"]
    assert plan[0][0] == 60 and plan[-1][0] < 480
    assert fault_plan([], 10, 60) == []


def test_fault_names_are_checked() -> None:
    assert parse_faults("all") == list(ALL_FAULTS)
    assert parse_faults(None) == []
    assert parse_faults("kill:consumer,kafka-restart") == ["kill:consumer", "kafka-restart"]
    with pytest.raises(SystemExit, match="unknown fault"):
        parse_faults("kill:nothing")
    with pytest.raises(SystemExit):
        main(["--minutes", "0"])


def test_rss_growth_is_measured_after_warm_up_and_after_a_restart() -> None:
    soak = Soak(stack=None, infra=None)  # type: ignore[arg-type]
    for t in range(0, 600, 5):
        soak.rss.append((float(t), "flat", 1, 100.0))
        soak.rss.append((float(t), "leaky", 2, 100.0 + t / 10))  # +6 MB a minute
        pid = 3 if t < 300 else 4  # restarted at 300 s: its first run's memory does not count
        soak.rss.append((float(t), "restarted", pid, 500.0 if t < 300 else 80.0 + (t - 300) / 100))
    figs = rss_figures(soak, warmup_s=120)
    assert figs["flat"]["growth_pct"] == 0.0 and figs["flat"]["slope_mb_per_h"] == 0.0
    assert figs["leaky"]["growth_pct"] > 20 and abs(figs["leaky"]["slope_mb_per_h"] - 360) < 1
    assert figs["restarted"]["restarted"] and figs["restarted"]["from_s"] >= 360
    assert figs["restarted"]["growth_pct"] < 5


def test_recovery_is_the_first_clean_stretch_after_the_fault() -> None:
    from zerorec.bench_soak import Fault

    soak = Soak(stack=None, infra=None)  # type: ignore[arg-type]
    soak.started -= 100  # "now" is 100 s into the soak
    soak.recs = [Sample(t / 2, 10, "degraded" if 20 <= t / 2 < 30 else "ok") for t in range(0, 200)]
    soak.posts = [Sample(t / 2, 5, "accepted") for t in range(0, 200)]
    assert recovered_at(soak, Fault("kill:recall", start=20, end=21)) == 30


def _servers_available() -> str | None:
    for binary in ("redis-server", "java"):
        if shutil.which(binary) is None:
            return f"{binary} is not installed (local/bootstrap.sh)"
    return None


def test_short_soak_with_faults_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    missing = _servers_available()
    if missing:
        if os.environ.get("ZEROREC_INTEGRATION") == "1":
            pytest.fail(missing)
        pytest.skip(missing)
    out = tmp_path / "soak.json"
    code = main(
        [
            "--minutes", "1", "--faults", "kill:consumer,kill:recall,kafka-restart",
            "--rps", "5", "--events-per-s", "50", "--warmup", "10",
            "--export-every", "20", "--json", str(out), "--keep", str(tmp_path / "work"),
        ]
    )  # fmt: skip
    report = json.loads(out.read_text())
    summary = {k: report[k] for k in ("errors", "accepted", "applied", "lost", "duplicated")}
    assert report["accepted"] > 1000, summary
    assert (report["lost"], report["duplicated"], report["errors"]) == (0, 0, 0), summary
    assert code == 0 and report["pass"] is True
    assert [f["fault"] for f in report["timeline"]] == ["kill:consumer", "kill:recall", "kafka-restart"]
    assert all(f["recovered_s"] is not None for f in report["timeline"]), report["timeline"]
    assert set(report["health_at_end"].values()) == {200}
    assert report["worker_tasks"]["unanswered"] == 0, report["worker_tasks"]
    assert set(report["rss_growth_pct"]) >= {"recall", "consumer", "worker", "kafka", "redis", "s3"}
