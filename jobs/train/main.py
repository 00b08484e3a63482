"""model-training job: behavior log (or a dataset) -> train -> bundle -> `model.published` event.

A thin entry over `zerorec.pipeline.train_recommender` for a Kubernetes Job / CronJob (or a Knative
PingSource-started job). Input, one of:
- `--events-prefix exports/events`: the Parquet objects that `dev.zerorec.task.export-events.v1`
  wrote to the object store (deduplicated by `event_id`);
- `--dataset PATH`: a dataset folder or interactions file (zerorec.data.load_dataset).
`--items-key` optionally names a CSV/Parquet catalogue object (item_id, title, categories, ...).
`--engine spark` (or ZEROREC_TRAIN_ENGINE=spark) trains on Spark (`zerorec.training.spark`, master
ZEROREC_SPARK_MASTER): the export's Parquet is fetched once and read by Spark, not by pandas.
The bundle goes to `models/<name>/<version>/` and LATEST moves; then a
`dev.zerorec.model.published.v1` CloudEvent (binary HTTP) is POSTed to `$K_SINK` (a SinkBinding's
broker) and to every `--sink` URL (e.g. a serving function's `/events/model-published`).
A sink that refuses is reported (exit 0: the bundle is live; functions also load LATEST at start).
Run: `python jobs/train/main.py --events-prefix exports/events --sink http://recall/events/model-published`.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd
from zerorec.bundle import publish_bundle
from zerorec.cloudevents_io import new_event, to_http_binary, validate
from zerorec.data.interactions import normalize_interactions, normalize_items
from zerorec.errors import InvalidInputError, NotFoundError
from zerorec.feedback import configured_weights, training_weights
from zerorec.storage.objects import ObjectStore

MODEL_PUBLISHED = "dev.zerorec.model.published.v1"
SOURCE = "/zerorec/model-training"
log = logging.getLogger("zerorec.jobs.train")
Post = Callable[[str, dict[str, str], bytes], int]


def read_event_log(store: ObjectStore, prefix: str) -> pd.DataFrame:
    """The exported behavior events under `prefix` as a normalised interactions frame."""
    keys = [k for k in store.list(prefix.rstrip("/") + "/") if k.endswith(".parquet")]
    if not keys:
        raise NotFoundError(f"no exported events (*.parquet) under {prefix!r}")
    frame = pd.concat([pd.read_parquet(io.BytesIO(store.get(k))) for k in keys], ignore_index=True)
    frame = frame.drop_duplicates("event_id", keep="last")
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    seconds = (stamps - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    out = pd.DataFrame(
        {
            "user_id": frame["user_id"].astype(str),
            "item_id": frame["item_id"].astype(str),
            "timestamp": seconds.astype("int64"),
            "event_type": frame["kind"].astype(str),
        }
    )
    # Per-kind weights (ZEROREC_FEEDBACK_WEIGHTS); dislikes and hides are no interaction to learn from.
    keep, weight = training_weights(out["event_type"].tolist(), configured_weights())
    out = out.assign(weight=weight)[keep]
    return normalize_interactions(out, f"events under {prefix}")


def read_items(store: ObjectStore, key: str) -> pd.DataFrame:
    """A catalogue object (CSV or Parquet) as normalised item metadata."""
    raw = store.get(key)
    frame = pd.read_parquet(io.BytesIO(raw)) if key.endswith(".parquet") else pd.read_csv(io.BytesIO(raw))
    return normalize_items(frame, key)


def _http_post(url: str, headers: dict[str, str], body: bytes) -> int:
    import httpx

    return httpx.post(url, headers=headers, content=body, timeout=10.0).status_code


def spark_trainer() -> Callable[..., Any]:
    """The Spark engine with the configured master, driver memory and torch device."""
    from zerorec.settings import get_settings
    from zerorec.training.spark import SparkTrainConfig, train_spark

    s = get_settings()
    cfg = SparkTrainConfig(master=s.spark_master, driver_memory=s.spark_driver_memory, device=s.train_device)

    def train(
        source: Any, items: pd.DataFrame | None = None, log: Callable[[str], None] | None = None
    ) -> Any:
        return train_spark(source, items, spark_config=cfg, log=log)

    return train


def train_events_spark(
    store: ObjectStore,
    prefix: str,
    items: pd.DataFrame | None = None,
    **publish: Any,
) -> dict[str, Any]:
    """`train_and_publish` on Spark over the export under `prefix` (fetched to a scratch folder)."""
    import tempfile

    from jobs.feature_engineering.job import fetch_events

    with tempfile.TemporaryDirectory(prefix="zerorec-train-events-") as tmp:
        if not fetch_events(store, prefix, Path(tmp)):
            raise NotFoundError(f"no exported events (*.parquet) under {prefix!r}")
        return train_and_publish(store, tmp, items, train=spark_trainer(), **publish)


def train_and_publish(
    store: ObjectStore,
    interactions: pd.DataFrame | str,
    items: pd.DataFrame | None = None,
    *,
    name: str = "recommender",
    sinks: Sequence[str] = (),
    post: Post = _http_post,
    train: Callable[..., Any] | None = None,
) -> dict[str, Any]:
    """Train, publish the bundle (LATEST moves) and announce it to every sink; returns a report."""
    from zerorec.pipeline import train_recommender

    rec, info = (train or train_recommender)(interactions, items, log=log.info)
    metrics = {
        k: float(info[k]) for k in ("validation_candidate_recall", "train_seconds") if info.get(k) is not None
    }
    version = publish_bundle(
        store, name, rec.to_files(), params=info["config"], metrics=metrics, data_window=info["data_window"]
    )
    data = {
        "name": name,
        "version": version,
        "manifest_key": f"models/{name}/{version}/manifest.json",
        "metrics": metrics,
    }
    event = new_event(MODEL_PUBLISHED, data, source=SOURCE, subject=name)
    validate(event)
    headers, body = to_http_binary(event)
    delivered: dict[str, Any] = {}
    for url in sinks:
        try:
            delivered[url] = post(url, headers, body)
        except Exception as exc:  # a sink down must not undo a published bundle
            delivered[url] = f"error: {exc}"
        if delivered[url] not in (200, 202, 204):
            log.warning("sink %s did not take the event: %s", url, delivered[url])
    return {"event": data, "event_id": event["id"], "delivered": delivered, **info["data_window"]}


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry: parse arguments, load the input, train and publish."""
    from threadpoolctl import threadpool_limits
    from zerorec.data import load_dataset
    from zerorec.settings import get_settings
    from zerorec.storage import object_store

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    src = parser.add_mutually_exclusive_group(required=True)
    src.add_argument("--events-prefix", help="object-store prefix of the exported behavior Parquet")
    src.add_argument("--dataset", type=Path, help="dataset folder or interactions file")
    parser.add_argument("--items-key", help="catalogue object (CSV/Parquet) in the object store")
    parser.add_argument("--name", default=None, help="model name (default: settings.model_name)")
    parser.add_argument("--sink", action="append", default=[], help="URL to POST the event to")
    parser.add_argument("--engine", choices=("local", "spark"), default=None, help="default: settings")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    settings = get_settings()
    store = object_store(settings)
    engine = args.engine or settings.train_engine
    try:
        sinks = [s for s in [os.environ.get("K_SINK", ""), *args.sink] if s]
        name = args.name or settings.model_name
        items = read_items(store, args.items_key) if args.items_key else None
        if engine == "spark" and args.dataset is not None:
            report = train_and_publish(
                store, str(args.dataset), items, name=name, sinks=sinks, train=spark_trainer()
            )
        elif engine == "spark":
            report = train_events_spark(store, args.events_prefix, items, name=name, sinks=sinks)
        else:
            if args.dataset is not None:
                interactions, found = load_dataset(args.dataset)
                items = items if items is not None else found
            else:
                interactions = read_event_log(store, args.events_prefix)
            with threadpool_limits(int(os.environ.get("ZEROREC_TRAIN_THREADS", "2"))):
                report = train_and_publish(store, interactions, items, name=name, sinks=sinks)
    except (InvalidInputError, NotFoundError) as exc:
        print(json.dumps({"error": str(exc)}), file=sys.stderr)
        return 2
    print(json.dumps(report, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
