"""Scale benchmark: train, publish and serve synthetic catalogues of 10k, 100k and 1M items.

`zerorec bench scale [--sizes S,M,L] [--json FILE]`, per size:

1. a training process (this module with ``--train``) generates the logs (`data.synthetic.
   generate_scale`: Zipf popularity, clustered users), cuts temporal-user-20, trains with the bench
   configuration (`bench_config`: what completes on a small machine), publishes the bundle to
   an embedded object store of its own and scores a seeded sample of the evaluated users offline
   (NDCG@10 / Recall@20 of the full pipeline, and of popularity);
2. starts recall, ranking and the BFF chain (reranking, user, item, recommender) on that bundle,
   with bench_serve's helpers, and measures recall's latency in the function (HTTP at concurrency
   1, 500 candidates), `POST /recommend` at concurrency 1, recall's and ranking's RSS after the load
   and their cold start (process start to the first answer).

Figures per size: train_s, train_peak_rss_mb, bundle_mb, recall_rss_mb, ranking_rss_mb,
cold_start_ms (recall; ranking's beside it), recall_p50_ms, recall_p99_ms, recommend_p50_ms,
ndcg10, recall20, popularity_ndcg10. Loopback and embedded backends only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from zerorec.data.synthetic import ScaleConfig

SIZES: dict[str, ScaleConfig] = {
    "S": ScaleConfig(n_items=10_000, n_users=100_000, n_interactions=1_000_000),
    "M": ScaleConfig(n_items=100_000, n_users=1_000_000, n_interactions=10_000_000),
    "L": ScaleConfig(n_items=1_000_000, n_users=10_000_000, n_interactions=50_000_000),
}
EVAL_USERS = 2000  # offline metrics on a seeded sample of the evaluated users
REQUEST_USERS = 300
RECALL_REQUESTS = 400
RECOMMEND_REQUESTS = 200
CANDIDATES = 500
RECENT = 20  # the request users' newest training items written to the KV as their real-time state
RSS_BUDGET_MB = 512
TRAIN_COMMAND = [sys.executable, "-m", "zerorec.bench_scale"]  # the training process


def bench_config(size: str) -> Any:
    """The pipeline configuration the bench trains: the defaults (EASE's closed form on the 5k most
    popular items), with ranker rows from a sample of 2,000 users and 4 epochs, so that training
    completes on a small machine."""
    from zerorec.pipeline import PipelineConfig

    return PipelineConfig(ranker_max_users=2_000, ranker_epochs=4)


def _peak_rss_mb() -> float:
    return round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)


def train_size(size: str, out: Path, progress: bool = True) -> dict[str, Any]:
    """The training process's work (see the module doc); writes and returns its figures."""
    import numpy as np
    from threadpoolctl import threadpool_limits
    from tqdm.auto import tqdm

    from zerorec.bundle import publish_bundle
    from zerorec.data.synthetic import generate_scale
    from zerorec.evaluation import protocol_split, ranking_metrics
    from zerorec.pipeline import _run_users, _truth, train_recommender
    from zerorec.settings import get_settings
    from zerorec.storage import object_store

    steps = tqdm(total=5, desc=f"bench scale {size}", disable=not progress)
    figures: dict[str, Any] = {
        "size": size,
        **{k: getattr(SIZES[size], k) for k in ("n_items", "n_users", "n_interactions")},
    }
    t0 = time.perf_counter()
    interactions, items = generate_scale(SIZES[size])
    figures["generate_s"] = round(time.perf_counter() - t0, 1)
    figures["interactions"] = len(interactions)
    steps.update()
    steps.set_postfix_str("split")
    ps = protocol_split(interactions, items)
    del interactions
    steps.update()
    steps.set_postfix_str("train")
    config = bench_config(size)
    t0 = time.perf_counter()
    with threadpool_limits(2):
        rec, info = train_recommender(ps.train_frame, items, config, progress=progress)
    figures["train_s"] = round(time.perf_counter() - t0, 1)
    figures["train_peak_rss_mb"] = _peak_rss_mb()  # generation + split + training
    figures["config"] = config.to_json()
    figures["trained"] = {
        "ranker_rows": info.get("ranker_rows"),
        "ease_head": len(rec.channels["ease"].keep),
    }  # type: ignore[attr-defined]
    steps.update()
    steps.set_postfix_str("publish")
    files = rec.to_files()
    figures["bundle_mb"] = round(sum(len(v) for v in files.values()) / 2**20, 1)
    figures["bundle_files_mb"] = {
        k: round(len(v) / 2**20, 2) for k, v in sorted(files.items(), key=lambda kv: -len(kv[1]))[:8]
    }
    s = get_settings()
    figures["version"] = publish_bundle(object_store(s), s.model_name, files, params=config.to_json())
    del files
    steps.update()
    steps.set_postfix_str("evaluate")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(ps.users), min(EVAL_USERS, len(ps.users)), replace=False))
    users = ps.users[pick]
    truth_all = _truth(rec, ps)
    truth = [truth_all[i] for i in pick]
    runs = _run_users(rec, users.tolist(), 20, {"full": None}, progress=progress)
    full = ranking_metrics(np.array(runs.rows["full"]), truth)
    popularity = rec.data.item_popularity()
    pop_recs = []
    order = np.argsort(-popularity, kind="stable")
    for u in users.tolist():
        seen = set(rec.data.history(int(u))[0].tolist())
        pop_recs.append([i for i in order[: 20 + len(seen)].tolist() if i not in seen][:20])
    pop = ranking_metrics(np.array(pop_recs), truth)
    figures.update(
        ndcg10=round(full["ndcg@10"], 4),
        recall20=round(full["recall@20"], 4),
        popularity_ndcg10=round(pop["ndcg@10"], 4),
        popularity_recall20=round(pop["recall@20"], 4),
        eval_users=len(users),
        offline_ms_per_user=round(runs.wall["full"] * 1000 / max(len(users), 1), 2),
    )
    figures["request_users"] = [str(rec.data.user_ids[u]) for u in users[:REQUEST_USERS].tolist()]
    figures["request_recent"] = {  # what the KV holds for them in production: their newest items
        str(rec.data.user_ids[u]): [str(rec.data.item_ids[i]) for i in rec.data.history(int(u))[0][-RECENT:]]
        for u in users[:REQUEST_USERS].tolist()
    }
    steps.update()
    steps.close()
    out.write_text(json.dumps(figures))
    return figures


def serve_size(
    size: str, env_dir: Path, figures: dict[str, Any], log: Callable[[str], None]
) -> dict[str, Any]:
    """Start the functions on the published bundle and measure them (see the module doc)."""
    import orjson

    from zerorec import bench_serve as bs

    stack = bs.make_stack(False, env_dir / "logs", _env(size, env_dir))
    users = figures["request_users"]
    _write_user_state(bs.settings_from_env(stack.env), figures["request_recent"])
    out: dict[str, Any] = {}
    try:
        took = stack.start(bs.FUNCTIONS, timeout_s=900)
        log(f"scale {size}: functions up " + ", ".join(f"{k} {v}s" for k, v in took.items()))
        probes = bs.Probes.build(stack, users)
        recall_bodies = [orjson.dumps({"user_id": u, "n": CANDIDATES}) for u in users]
        asyncio.run(bs.drive(stack.services["recall"].port, "/", recall_bodies, 1, 60.0, 20))
        lv = asyncio.run(
            bs.drive(stack.services["recall"].port, "/", recall_bodies, 1, 120.0, RECALL_REQUESTS)
        )
        f = lv.figures()
        out.update(recall_p50_ms=f["p50_ms"], recall_p99_ms=f["p99_ms"], recall_errors=f["errors"])
        bodies = [orjson.dumps({"user_id": u, "n": 20}) for u in users]
        port = stack.services["recommender"].port
        asyncio.run(bs.drive(port, "/recommend", bodies, 1, 60.0, 20))
        lv = asyncio.run(bs.drive(port, "/recommend", bodies, 1, 120.0, RECOMMEND_REQUESTS))
        f = lv.figures()
        out.update(recommend_p50_ms=f["p50_ms"], recommend_p99_ms=f["p99_ms"], recommend_errors=f["errors"])
        out["recommend_degraded"] = f["degraded"]
        out["recall_rss_mb"] = bs.rss_mb(stack.procs["recall"].pid)
        out["ranking_rss_mb"] = bs.rss_mb(stack.procs["ranking"].pid)
        out["cold_start_ms"] = bs.cold_start(stack, probes, "recall", timeout_s=600)
        out["ranking_cold_start_ms"] = bs.cold_start(stack, probes, "ranking", timeout_s=600)
    finally:
        stack.stop_all()
    return out


def _write_user_state(settings: Any, recent: dict[str, list[str]]) -> None:
    """The users' real-time state in the KV, as the consumer writes it from their events: above
    `coldstart.SERVING_MAX_USERS` recall and ranking know a user from it alone."""
    from zerorec.realtime import BehaviorEvent, behavior_writes
    from zerorec.storage import kv_store

    kv = kv_store(settings)
    for user, items in recent.items():
        ops = []
        for k, item in enumerate(items):
            ops += behavior_writes(BehaviorEvent(user, item, "click", 1_700_000_000.0 + k), ())
        kv.write(ops)


def _env(size: str, env_dir: Path) -> dict[str, str]:
    return {"ZEROREC_DATA_DIR": str(env_dir), "ZEROREC_MODEL_NAME": f"scale-{size.lower()}"}


def run_size(size: str, work: Path, log: Callable[[str], None], progress: bool = True) -> dict[str, Any]:
    """One size end to end: the training process, then the functions."""
    from zerorec import bench_serve as bs

    env_dir = work / size
    shutil.rmtree(env_dir, ignore_errors=True)
    env_dir.mkdir(parents=True)
    env = bs._local_functions().function_env(False, extra=_env(size, env_dir))
    result = env_dir / "train.json"
    cmd = [*TRAIN_COMMAND, "--train", size, "--out", str(result)]
    if not progress:
        cmd.append("--quiet")
    log(f"scale {size}: training ({' '.join(cmd[1:])})")
    subprocess.run(cmd, env=env, check=True)
    figures = json.loads(result.read_text())
    figures.update(serve_size(size, env_dir, figures, log))
    figures.pop("request_users", None)
    figures.pop("request_recent", None)
    return figures


def targets(report: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """Recall RSS within budget at every size; recall p50 at the largest size <= 1.5x at S."""
    out = [
        {
            "target": f"recall RSS at {size} <= {RSS_BUDGET_MB} MiB",
            "value": fig.get("recall_rss_mb"),
            "result": "PASS" if (fig.get("recall_rss_mb") or 1e9) <= RSS_BUDGET_MB * 1.048576 else "MISS",
        }
        for size, fig in report.items()
    ]
    sizes = [s for s in SIZES if s in report]
    if "S" in report and len(sizes) > 1:
        big = sizes[-1]
        ratio = report[big]["recall_p50_ms"] / report["S"]["recall_p50_ms"]
        out.append(
            {
                "target": f"recall p50 at {big} <= 1.5x at S",
                "value": round(ratio, 2),
                "result": "PASS" if ratio <= 1.5 else "MISS",
            }
        )
    return out


COLUMNS = (
    "train_s",
    "train_peak_rss_mb",
    "bundle_mb",
    "recall_rss_mb",
    "ranking_rss_mb",
    "cold_start_ms",
    "recall_p50_ms",
    "recall_p99_ms",
    "recommend_p50_ms",
    "ndcg10",
    "recall20",
    "popularity_ndcg10",
)


def render(report: dict[str, dict[str, Any]]) -> str:
    lines = ["| size | " + " | ".join(COLUMNS) + " |", "|---" * (len(COLUMNS) + 1) + "|"]
    for size, fig in report.items():
        lines.append(f"| {size} | " + " | ".join(str(fig.get(c)) for c in COLUMNS) + " |")
    for t in targets(report):
        lines.append(f"{t['result']}: {t['target']} ({t['value']})")
    return "\n".join(lines)


def main(sizes: Sequence[str] = ("S",), json_path: Path | None = None, work: Path | None = None) -> int:
    """CLI body: each size in turn; the table, and `json_path` keyed by size. 0 when every target
    passed, 1 when one missed, 2 for an unknown size."""
    unknown = [s for s in sizes if s not in SIZES]
    if unknown:
        print(f"unknown size(s) {unknown}: choose from {', '.join(SIZES)}", file=sys.stderr)
        return 2
    work = work or Path(tempfile.mkdtemp(prefix="zerorec-bench-scale-"))
    report: dict[str, dict[str, Any]] = {}
    for size in sizes:
        report[size] = run_size(size, work, lambda m: print(m, flush=True))
        if json_path is not None:  # written after each size: a long run keeps what it measured
            json_path.parent.mkdir(parents=True, exist_ok=True)
            json_path.write_text(json.dumps(report, indent=2))
    print(render(report))
    return 0 if all(t["result"] == "PASS" for t in targets(report)) else 1


def _cli(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m zerorec.bench_scale")
    parser.add_argument("--train", help="(internal) the training process of one size")
    parser.add_argument("--out", type=Path)
    parser.add_argument("--quiet", action="store_true")
    args = parser.parse_args(argv)
    if not args.train or args.out is None:
        parser.error("--train SIZE --out FILE")
    train_size(args.train, args.out, progress=not args.quiet)
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli())
