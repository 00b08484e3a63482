"""The scale bench's synthetic logs and its verdicts (the bench itself runs for minutes: not here)."""

from __future__ import annotations

import numpy as np
from zerorec.bench_scale import SIZES, main, render, targets
from zerorec.data.synthetic import ScaleConfig, generate_scale

SMALL = ScaleConfig(n_items=3000, n_users=4000, n_interactions=60_000, n_clusters=8, seed=3)


def test_scale_logs_are_deterministic_zipf_clustered_and_causal() -> None:
    inter, items = generate_scale(SMALL)
    again, _ = generate_scale(SMALL)
    assert inter.equals(again)
    assert len(inter) == SMALL.n_interactions
    assert not inter.duplicated(["user_id", "item_id"]).any()
    counts = inter["item_id"].value_counts().to_numpy()
    assert counts[:30].sum() > 0.15 * len(inter)  # a Zipf head
    created = dict(zip(items["item_id"], items["created_at"], strict=True))
    assert (inter["timestamp"].to_numpy() >= inter["item_id"].map(created).to_numpy()).all()
    # clustered taste: a user's items concentrate on one category far beyond the global share
    cat = dict(zip(items["item_id"], [c[0] for c in items["categories"]], strict=True))
    first = inter.assign(c=inter["item_id"].map(cat)).groupby("user_id")["c"]
    top_share = first.agg(lambda s: s.value_counts(normalize=True).iloc[0])
    sizes = inter.groupby("user_id").size()
    assert float(np.median(top_share[sizes >= 20])) > 0.4


def test_targets_and_table() -> None:
    report = {
        "S": {"recall_rss_mb": 300.0, "recall_p50_ms": 10.0},
        "M": {"recall_rss_mb": 600.0, "recall_p50_ms": 14.0},
    }
    verdicts = {t["target"]: t["result"] for t in targets(report)}
    assert verdicts == {
        "recall RSS at S <= 512 MiB": "PASS",
        "recall RSS at M <= 512 MiB": "MISS",
        "recall p50 at M <= 1.5x at S": "PASS",
    }
    report["M"]["recall_p50_ms"] = 16.0
    assert targets(report)[-1]["result"] == "MISS"
    assert "| S |" in render(report) and "MISS" in render(report)
    assert set(SIZES) == {"S", "M", "L"}


def test_unknown_size_is_a_clear_error(capsys) -> None:  # type: ignore[no-untyped-def]
    assert main(["XL"]) == 2
    assert "unknown size" in capsys.readouterr().err
