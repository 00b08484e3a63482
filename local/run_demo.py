"""The main job (`./local/task run`): train, publish, serve, feed real events, show a recommendation.

    .venv/bin/python local/run_demo.py [--real] [--timeout 180]

On the embedded default (SQLite KV and bus, models in a directory under ZEROREC_DATA_DIR, default
.zerorec: nothing to set up):
1. trains a model with `zerorec train` on the synthetic generator, or on the dataset named by
   ZEROREC_DATASET (e.g. a MovieLens folder), and publishes the bundle; an already published model
   is reused unless ZEROREC_DATASET changed or ZEROREC_RETRAIN=1;
2. (re)starts every function as its own process (local/functions.py) and imports the catalogue
   through the item stream (worker -> items topic -> consumer -> item store);
3. asks the recommender for a sample recommendation and prints it (titles, channel, reasons,
   degraded flags, timings);
4. sends a view and a click on the top item through the behavior function (POST /events: bus ->
   KafkaSource dispatcher -> consumer -> KV), waits until the user's profile shows them, and asks
   again: the clicked item is gone;
5. prints the curl commands to get more and how to stop (`./local/task down`).

The functions keep serving after this script returns.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from local import functions as lf  # noqa: E402

N = 10


def say(msg: str) -> None:
    """A progress line."""
    print(f"[run {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def ensure_trained(env: dict[str, str]) -> str:
    """The published version, training (and publishing) one first when needed."""
    dataset = os.environ.get("ZEROREC_DATASET", "").strip()
    marker = Path(env["ZEROREC_DATA_DIR"]) / "run-dataset.txt"
    wanted = dataset or "synthetic"
    have = lf.ensure_model(env, train=False)
    last = marker.read_text().strip() if marker.exists() else "synthetic"
    if have and last == wanted and os.environ.get("ZEROREC_RETRAIN") != "1":
        say(f"model already published: version {have} (trained on {last}; ZEROREC_RETRAIN=1 to retrain)")
        return have
    say(f"training on {wanted} (zerorec train; a few minutes on 2 cores) ...")
    cmd = [str(lf.BIN / "zerorec"), "train"] + (["--dataset", dataset] if dataset else [])
    subprocess.run(cmd, env=env, cwd=ROOT, check=True)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.write_text(wanted)
    version = lf.ensure_model(env, train=False)
    if not version:
        raise SystemExit("run: training finished but no model is published")
    say(f"published model version {version}")
    return version


def recommend(base: str, user: str, n: int = N) -> dict[str, Any]:
    """POST /recommend."""
    r = httpx.post(f"{base}/recommend", json={"user_id": user, "n": n}, timeout=30)
    r.raise_for_status()
    return r.json()


def show(doc: dict[str, Any], title: str) -> None:
    """A recommendation in readable form."""
    print(f"\n{title}: user {doc['user_id']}, source {doc['source']}")
    print(f"  {'#':>2}  {'item':12s} {'title':28s} {'categories':24s} {'channel':8s} {'score':>8}  reasons")
    for k, it in enumerate(doc["items"], start=1):
        meta = it.get("metadata") or {}
        name = str(meta.get("title") or "-")[:28]
        cats = ",".join(meta.get("categories") or [])[:24]
        reasons = ", ".join(it.get("reasons") or []) or "-"
        item, channel = it["item_id"], it["channel"]
        print(f"  {k:>2}  {item:12s} {name:28s} {cats:24s} {channel:8s} {it['score']:8.4f}  {reasons}")
    print(f"  degraded: {', '.join(doc['degraded']) or 'none'}")
    print("  timings ms: " + "  ".join(f"{k} {v:.1f}" for k, v in doc["timings_ms"].items()))
    print(f"  model versions: {doc.get('model_versions')}\n")


def pick_user(base: str, env: dict[str, str]) -> str:
    """A user of the training data (its history makes the answer personal)."""
    code = (
        "from zerorec.bench_serve import model_users, settings_from_env; import os;"
        "print(model_users(settings_from_env(os.environ), limit=1)[0])"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "u1"


def send_events(base: str, user: str, item: str) -> None:
    """A view then a click on `item`, through the behavior function."""
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    events = [{"kind": k, "user_id": user, "item_id": item, "timestamp": now} for k in ("view", "click")]
    key = os.environ.get("ZEROREC_BEHAVIOR_API_KEY", "")
    r = httpx.post(f"{base}/events", json=events, headers={"X-API-Key": key} if key else {}, timeout=30)
    say(f"POST /events (view + click on {item}): {r.status_code} {r.text[:160]}")
    r.raise_for_status()


def wait_profile(base: str, user: str, item: str, timeout_s: float) -> float:
    """Seconds until the user's profile lists `item` first among its recent items."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:
        r = httpx.post(f"{base}/", json={"user_id": user}, timeout=10)
        if r.status_code == 200 and r.json().get("recent_items", [None])[:1] == [item]:
            return time.monotonic() - t0
        time.sleep(0.2)
    raise SystemExit(f"run: the click did not reach {user}'s profile within {timeout_s:.0f} s")


def import_catalogue(env: dict[str, str], worker: str, item_fn: str, timeout_s: float = 120) -> None:
    """The training catalogue through the item stream, as production would: a Parquet object, a
    catalogue-import task to the worker, item events on the items topic, the consumer into the KV
    (the item function then serves titles)."""
    import io

    from zerorec.cloudevents_io import new_event, to_http_binary
    from zerorec.data import generate, load_dataset
    from zerorec.settings import Settings
    from zerorec.storage import object_store

    dataset = env.get("ZEROREC_DATASET")
    items = load_dataset(Path(dataset))[1] if dataset else generate()[1]
    settings = Settings(
        **{
            k[8:].lower(): v
            for k, v in env.items()
            if k[8:].lower() in Settings.model_fields and k.startswith("ZEROREC_")
        }
    )
    buf = io.BytesIO()
    items[["item_id", "title", "categories", "created_at"]].to_parquet(buf)
    object_store(settings).put("imports/catalogue.parquet", buf.getvalue())
    task = new_event(
        "dev.zerorec.task.catalogue-import.v1",
        {"key": "imports/catalogue.parquet", "format": "parquet"},
        source="/zerorec/run-demo",
    )
    headers, body = to_http_binary(task)
    r = httpx.post(f"{worker}/", headers=headers, content=body, timeout=120)
    say(f"catalogue import ({len(items)} items) -> items topic: {r.status_code} {r.text[:120]}")
    r.raise_for_status()
    last = str(items["item_id"].iloc[-1])
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout_s:  # the consumer applies the stream in order
        got = httpx.post(f"{item_fn}/", json={"item_ids": [last]}, timeout=10).json()["items"]
        if got.get(last, {}).get("title"):
            say(f"the catalogue reached the item store after {time.monotonic() - t0:.1f} s")
            return
        time.sleep(0.3)
    say(f"the catalogue did not reach the item store within {timeout_s:.0f} s; items show without titles")


def warm(base: str, user: str, tries: int = 5) -> dict[str, Any]:
    """First requests warm the HTTP pools; return the first undegraded answer (or the last one)."""
    doc: dict[str, Any] = {}
    for _ in range(tries):
        doc = recommend(base, user)
        if not doc["degraded"]:
            break
    return doc


def main(argv: list[str] | None = None) -> int:
    """Run the main job; 0 when the system is serving and the click removed the item."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--real", action="store_true", help="real Kafka/Redis/S3 (local/infra.sh start)")
    parser.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for every /health")
    args = parser.parse_args(argv)
    env = lf.function_env(args.real)
    say(f"data dir {env['ZEROREC_DATA_DIR']}; backends {'real' if args.real else 'embedded'}")
    ensure_trained(env)
    say("stopping functions of an earlier run (if any), then starting all of them ...")
    lf.stop()
    if lf.start(args.real, args.timeout, train=False) != 0:
        return 1
    p = lf.PORTS
    bff, user_fn, behavior, worker, item_fn = (
        f"http://127.0.0.1:{p[n]}" for n in ("recommender", "user", "behavior", "worker", "item")
    )
    import_catalogue(env, worker, item_fn)
    user = pick_user(bff, env)
    say(f"sample user {user}")
    first = warm(bff, user)
    show(first, "Recommendation")
    if not first["items"]:
        say("no items recommended: nothing to click")
        return 1
    clicked = first["items"][0]["item_id"]
    send_events(behavior, user, clicked)
    took = wait_profile(user_fn, user, clicked, timeout_s=60)
    say(f"the click reached {user}'s profile after {took:.1f} s (behavior -> bus -> consumer -> KV)")
    after = recommend(bff, user)
    show(after, f"After clicking {clicked}")
    gone = clicked not in [i["item_id"] for i in after["items"]]
    say(f"clicked item {clicked} {'is gone from' if gone else 'is STILL IN'} the next recommendation")
    rec_port, ev_port = p["recommender"], p["behavior"]
    ts = "2024-05-01T12:00:00Z"
    key = " -H \"X-API-Key: $ZEROREC_BEHAVIOR_API_KEY\"" if os.environ.get("ZEROREC_BEHAVIOR_API_KEY") else ""
    print(
        "\nThe system keeps serving. Get more:\n"
        f"  curl -s localhost:{rec_port}/recommend -H 'content-type: application/json' "
        f"""-d '{{"user_id": "{user}", "n": 10}}'\n"""
        f"  curl -s localhost:{ev_port}/events -H 'content-type: application/json'{key} "
        f"""-d '{{"kind": "click", "user_id": "{user}", "item_id": "{clicked}", "timestamp": "{ts}"}}'\n"""
        f"  curl -s localhost:{rec_port}/openapi.json   # the API;  gRPC on {p['recommender-grpc']}\n"
        f"  open http://localhost:{p['dashboard']}/users/{user}   # the dashboard (overview at /)\n"
        "  .venv/bin/python local/functions.py status   # what runs; logs in .local-infra/functions/\n"
        "Stop everything: ./local/task down"
    )
    return 0 if gone else 1


if __name__ == "__main__":
    sys.exit(main())
