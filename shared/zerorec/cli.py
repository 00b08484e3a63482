"""The `zerorec` command line: a thin layer over zerorec.pipeline (train, evaluate, recommend-batch)."""

from __future__ import annotations

import csv
import json
import time
from pathlib import Path
from typing import Annotated

import typer

app = typer.Typer(help="ZeroRec: train, evaluate and batch-score the recommender.", no_args_is_help=True)

ROW_METRICS = (
    "ndcg@10",
    "recall@10",
    "hr@10",
    "ndcg@20",
    "recall@20",
    "hr@20",
    "coverage@20",
    "diversity@20",
    "novelty@20",
    "wall_seconds",
)


def _load(dataset: Path | None, items: Path | None = None):  # type: ignore[no-untyped-def]
    from zerorec.data import generate, load_dataset, load_items

    if dataset is None:
        return generate()
    interactions, meta = load_dataset(dataset)
    if items is not None:
        meta = load_items(items)
    return interactions, meta


def _log(msg: str) -> None:
    typer.echo(f"[{time.strftime('%H:%M:%S')}] {msg}", err=True)


@app.command()
def train(
    dataset: Annotated[
        Path | None,
        typer.Option(
            help="dataset dir, interactions file or (spark) Parquet export dir/URL (default: synthetic)"
        ),
    ] = None,
    name: Annotated[str, typer.Option(help="model name in the object store")] = "recommender",
    engine: Annotated[
        str | None, typer.Option(help="local (one process) or spark (default: ZEROREC_TRAIN_ENGINE)")
    ] = None,
    master: Annotated[
        str | None, typer.Option(help="Spark master, e.g. local[*], spark://host:7077, k8s://https://...")
    ] = None,
    device: Annotated[
        str | None, typer.Option(help="torch device of the ranker (spark engine): cpu, cuda")
    ] = None,
) -> None:
    """Train every channel and the DeepFM ranker, then publish a bundle to the object store."""
    from zerorec.errors import ZeroRecError
    from zerorec.settings import get_settings
    from zerorec.training.progress import StageLog

    settings = get_settings()
    engine = engine or settings.train_engine
    if engine not in ("local", "spark"):
        raise typer.BadParameter(f"--engine must be local or spark, not {engine!r}")
    stages = StageLog(lambda line: typer.echo(line, err=True))
    try:
        rec, info = _train(dataset, engine, master, device, stages)
        stages("publishing the bundle")
        version = _publish(rec, info, name)
    except ZeroRecError as exc:  # bad input, or too large for the engine: a message, not a trace
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    stages("done")
    typer.echo(
        json.dumps(
            {
                "model": name,
                "version": version,
                "engine": engine,
                "train_seconds": round(info["train_seconds"], 1),
                "stage_seconds": stages.summary(),
            }
        )
    )


def _train(dataset: Path | None, engine: str, master: str | None, device: str | None, log):  # type: ignore[no-untyped-def]
    from threadpoolctl import threadpool_limits

    from zerorec.settings import get_settings

    settings = get_settings()
    if engine == "spark":
        from zerorec.training.spark import SparkTrainConfig, train_spark

        cfg = SparkTrainConfig(
            master=master or settings.spark_master,
            driver_memory=settings.spark_driver_memory,
            device=device or settings.train_device,
        )
        if dataset is None:
            interactions, items = _load(None)
            return train_spark(interactions, items, spark_config=cfg, log=log)
        return train_spark(str(dataset), spark_config=cfg, log=log)
    if (device or "cpu") != "cpu" or master:
        raise typer.BadParameter("--device and --master apply to --engine spark")
    from zerorec.pipeline import train_recommender

    log("loading the dataset")
    interactions, items = _load(dataset)
    with threadpool_limits(2):
        return train_recommender(interactions, items, progress=True, log=log)


def _trainer(engine: str, master: str | None):  # type: ignore[no-untyped-def]
    """train_recommender's signature for `engine` (None: the local engine itself)."""
    if engine == "local":
        if master:
            raise typer.BadParameter("--master applies to --engine spark")
        return None
    if engine != "spark":
        raise typer.BadParameter(f"--engine must be local or spark, not {engine!r}")
    from zerorec.settings import get_settings
    from zerorec.training.spark import SparkTrainConfig, train_spark

    settings = get_settings()
    cfg = SparkTrainConfig(
        master=master or settings.spark_master,
        driver_memory=settings.spark_driver_memory,
        device=settings.train_device,
    )

    def train(interactions, items, config=None, progress=False, log=None):  # type: ignore[no-untyped-def]
        return train_spark(interactions, items, config, cfg, log=log)

    return train


def _publish(rec, info, name: str) -> str:  # type: ignore[no-untyped-def]
    from zerorec.cluster_init import publish_trained
    from zerorec.settings import get_settings
    from zerorec.storage import object_store

    return publish_trained(object_store(get_settings()), name, rec, info)


@app.command("init-cluster")
def init_cluster_cmd(
    dataset: Annotated[
        str | None,
        typer.Option(
            help="first model's data: a path or s3://bucket/prefix of MovieLens-style CSVs "
            "(default: ZEROREC_INIT_DATASET, else the synthetic set)"
        ),
    ] = None,
    model_name: Annotated[
        str | None, typer.Option(help="model to publish (default: ZEROREC_MODEL_NAME)")
    ] = None,
) -> None:
    """Bring a new cluster's storage up: create the bucket if missing, then train and publish a first
    model if none is published. Idempotent. Exit 0 done (or nothing to do), 2 bad dataset or name,
    3 object store unreachable or refusing."""
    from zerorec.cluster_init import init_cluster
    from zerorec.errors import BackendUnavailableError, InvalidInputError, NotFoundError
    from zerorec.settings import get_settings

    try:
        report = init_cluster(get_settings(), dataset=dataset, model_name=model_name, log=_log)
    except (InvalidInputError, NotFoundError) as exc:
        _log(f"init-cluster failed: {exc}")
        raise typer.Exit(2) from None
    except BackendUnavailableError as exc:
        _log(f"init-cluster failed, object store unavailable: {exc}")
        raise typer.Exit(3) from None
    _log("init-cluster: done" if report.changed else "init-cluster: nothing to do (bucket and model exist)")
    typer.echo(json.dumps(report.to_json()))


@app.command()
def evaluate(
    dataset: Annotated[
        Path | None, typer.Option(help="dataset dir or interactions file (default: synthetic)")
    ] = None,
    out: Annotated[Path, typer.Option(help="folder for report.json and report.png")] = Path("out/evaluation"),
    engine: Annotated[str, typer.Option(help="training engine: local or spark")] = "local",
    master: Annotated[str | None, typer.Option(help="Spark master (spark engine)")] = None,
    ablation: Annotated[
        bool, typer.Option(help="one more row per feature group switched off (local engine)")
    ] = True,
) -> None:
    """The temporal-user-20 protocol (EVALUATION.md): one row per channel, merged, ranked, full,
    and the ablation rows: the full pipeline without each feature service (Spark, Flink, context,
    vectors)."""
    from threadpoolctl import threadpool_limits

    from zerorec.pipeline import evaluate_protocol
    from zerorec.training.progress import StageLog

    interactions, items = _load(dataset)
    log = StageLog(lambda line: typer.echo(line, err=True))
    with threadpool_limits(2):
        report = evaluate_protocol(
            interactions,
            items,
            progress=True,
            log=log,
            trainer=_trainer(engine, master),
            ablation=ablation and engine == "local",
        )
    report["dataset"] = dataset.name if dataset else "synthetic"  # a name, not a machine path
    report["engine"] = engine
    out.mkdir(parents=True, exist_ok=True)
    (out / "report.json").write_text(json.dumps(report, indent=2))
    typer.echo(
        f"dataset {report['dataset']}  protocol {report['protocol']}  users {report['users_evaluated']}  "
        f"train {report['train_seconds']:.1f}s  "
        + "  ".join(f"{k} {v:.4f}" for k, v in report.items() if k.startswith("candidate_recall"))
    )
    typer.echo(f"{'row':10s}" + "".join(f"{m:>13s}" for m in ROW_METRICS))
    for row, metrics in report["rows"].items():
        typer.echo(f"{row:10s}" + "".join(f"{metrics[m]:13.4f}" for m in ROW_METRICS))
    choice = report.get("serving_choice") or {}
    typer.echo(
        "serving order (chosen on the validation cut): "
        + (
            "DeepFM"
            if not choice.get("blend_channel") or not choice.get("blend_weight")
            else f"DeepFM blended with {choice['blend_channel']} (weight {choice['blend_weight']:g})"
            if choice["blend_weight"] < 1
            else f"the {choice['blend_channel']} channel's order"
        )
        + (", reranked" if choice.get("rerank") else ", not reranked")
    )
    if report.get("ablation"):
        typer.echo("ablation (the full pipeline with one feature group off; ranker retrained):")
        full = report["rows"]["full"]
        for row, metrics in report["ablation"].items():
            typer.echo(
                f"{row:16s}"
                + "".join(f"{metrics[m]:13.4f}" for m in ROW_METRICS)
                + f"   ndcg@10 {metrics['ndcg@10'] - full['ndcg@10']:+.4f}"
            )
    typer.echo("which stage earns what (change over the previous line):")
    for st in report.get("stages", []):
        typer.echo(
            f"  {st['stage']:22s} ndcg@10 {st['ndcg@10']:.4f} ({st.get('delta_ndcg@10', 0.0):+.4f})  "
            f"recall@20 {st['recall@20']:.4f} ({st.get('delta_recall@20', 0.0):+.4f})  "
            f"coverage@20 {st['coverage@20']:.4f}  diversity@20 {st['diversity@20']:.4f}"
        )
    _plot(report, out / "report.png")
    typer.echo(f"wrote {out / 'report.json'} and {out / 'report.png'}")


def _plot(report: dict, path: Path) -> None:
    """Left: every row (channels, merged, ranked, full); right: which stage earns what."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(report["rows"])
    metrics = ["ndcg@10", "recall@20", "hr@10", "coverage@20"]
    stages = report.get("stages", [])
    fig, axes = plt.subplots(1, 2 if stages else 1, figsize=(14 if stages else 10, 4.5), squeeze=False)
    ax = axes[0][0]
    width = 0.8 / len(metrics)
    for j, m in enumerate(metrics):
        ax.bar(
            [i + j * width for i in range(len(rows))], [report["rows"][r][m] for r in rows], width, label=m
        )
    ax.set_xticks([i + 0.4 - width / 2 for i in range(len(rows))], rows)
    ax.set_title(f"{report.get('dataset', '')} - {report['protocol']}")
    ax.legend()
    if stages:
        ax = axes[0][1]
        names = [st["stage"].replace("best channel ", "best channel\n") for st in stages]
        for j, m in enumerate(("ndcg@10", "recall@20")):
            xs = [i + j * 0.4 for i in range(len(stages))]
            bars = ax.bar(xs, [st[m] for st in stages], 0.4, label=m)
            for bar, st in zip(bars, stages, strict=True):
                delta = st.get(f"delta_{m}")
                if delta is not None:
                    ax.annotate(
                        f"{delta:+.3f}",
                        (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                        ha="center",
                        va="bottom",
                        fontsize=8,
                    )
        ax.set_xticks([i + 0.2 for i in range(len(stages))], names)
        rr = report.get("rerank", {})
        ax.set_title(
            f"which stage earns what (rerank: diversity {rr.get('diversity')}, "
            f"freshness {rr.get('freshness')})"
        )
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


@app.command("tune-rerank")
def tune_rerank_cmd(
    dataset: Annotated[
        Path | None, typer.Option(help="dataset dir or interactions file (default: synthetic)")
    ] = None,
    out: Annotated[Path, typer.Option(help="JSON file for the tuning table")] = Path(
        "out/evaluation/rerank_tuning.json"
    ),
    max_ndcg_loss: Annotated[float, typer.Option(help="relative NDCG@10 loss allowed")] = 0.01,
) -> None:
    """Choose the rerank rules (diversity, freshness, category cap) on the validation cut only."""
    from threadpoolctl import threadpool_limits

    from zerorec.pipeline import tune_rerank

    interactions, items = _load(dataset)
    with threadpool_limits(2):
        result = tune_rerank(interactions, items, max_ndcg_loss=max_ndcg_loss, progress=True, log=_log)
    result["dataset"] = dataset.name if dataset else "synthetic"  # a name, not a machine path
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    ref = result["ranked"]
    typer.echo(
        f"validation users {result['users_evaluated']}  recall+ranking: ndcg@10 {ref['ndcg@10']:.4f}  "
        f"diversity@20 {ref['diversity@20']:.4f}  coverage@20 {ref['coverage@20']:.4f}"
    )
    for row in sorted(result["table"], key=lambda r: -r["gain"])[:10]:
        typer.echo(
            f"  {row['setting']:24s} ndcg@10 {row['ndcg@10']:.4f}  diversity@20 {row['diversity@20']:.4f}  "
            f"coverage@20 {row['coverage@20']:.4f}  gain {row['gain']:+.3f}  "
            f"{'ok' if row['within_budget'] else 'over budget'}"
        )
    typer.echo(f"chosen: {result['chosen']}  wrote {out}")


@app.command("recommend-batch")
def recommend_batch(
    interactions: Annotated[Path, typer.Option(help="CSV with header user_id,item_id,timestamp")],
    users: Annotated[Path, typer.Option(help="one user id a line")],
    out: Annotated[Path, typer.Option(help="output CSV user_id,item_id,rank")],
    k: Annotated[int, typer.Option(min=1)] = 20,
    items: Annotated[Path | None, typer.Option(help="optional item metadata CSV")] = None,
) -> None:
    """Train on exactly the given interactions and write the top-k of each user (never a seen item)."""
    from threadpoolctl import threadpool_limits

    from zerorec.data import load_interactions, load_items, load_user_ids
    from zerorec.pipeline import train_recommender

    frame = load_interactions(interactions)
    meta = load_items(items) if items else None
    user_ids = load_user_ids(users)
    with threadpool_limits(2):
        rec, _ = train_recommender(frame, meta, progress=True, log=_log)
    out.parent.mkdir(parents=True, exist_ok=True)
    with threadpool_limits(1, "blas"), out.open("w", newline="") as fh:  # per-user calls: 1 BLAS thread
        writer = csv.writer(fh)
        writer.writerow(["user_id", "item_id", "rank"])
        for user in user_ids:
            for rank, r in enumerate(rec.recommend(user, k), start=1):
                writer.writerow([user, r.item_id, rank])
    typer.echo(f"wrote {out} ({len(user_ids)} users)")


@app.command("kafka-topics")
def kafka_topics(
    file: Annotated[Path | None, typer.Option(help="default: knative/eventing/kafka-topics.yaml")] = None,
) -> None:
    """Create the Kafka topics with their partitions and retention, or set them on existing ones."""
    from zerorec.errors import ZeroRecError
    from zerorec.kafka_topics import TOPICS_FILE, apply_topics, load_topic_specs
    from zerorec.settings import get_settings

    try:
        done = apply_topics(get_settings().kafka_bootstrap, load_topic_specs(file or TOPICS_FILE))
    except ZeroRecError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    for topic, what in done.items():
        typer.echo(f"{topic}: {what}")


# ------------------------------------------------------------------ benchmarks and the demo

bench_app = typer.Typer(
    help="Benchmarks: serve (POST /recommend), scale (synthetic catalogues), ingest (behavior -> Redis)."
)
app.add_typer(bench_app, name="bench")


@bench_app.command("serve")
def bench_serve(
    real: Annotated[bool, typer.Option(help="real Redis/S3 (local/infra.sh start), not embedded")] = False,
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures here")] = None,
    duration: Annotated[float, typer.Option(help="seconds per concurrency level (at most)")] = 10.0,
    max_requests: Annotated[int, typer.Option(help="requests per concurrency level (at most)")] = 5000,
    topology: Annotated[
        str, typer.Option(help="per-service (a function per stage) or compact (the pipeline function)")
    ] = "per-service",
) -> None:
    """Latency/throughput at concurrency 1, 8, 32, in-process floor, RSS and cold start; PASS/MISS."""
    from zerorec.bench_serve import TOPOLOGIES, main

    if topology not in TOPOLOGIES:
        raise typer.BadParameter(f"--topology must be one of {', '.join(TOPOLOGIES)}, got {topology!r}")
    raise typer.Exit(
        main(real=real, json_path=json_out, duration_s=duration, max_requests=max_requests, topology=topology)
    )


@bench_app.command("containers")
def bench_containers(
    json_out: Annotated[Path | None, typer.Option("--json", help="also write the figures here")] = None,
    runs: Annotated[int, typer.Option(help="cold starts per function (median reported)")] = 3,
    cpu_sweep: Annotated[
        str, typer.Option(help="recall/ranking cold start at these CPU limits, e.g. 0.2,1")
    ] = "",
) -> None:
    """Each function's cold start in its image at its manifest's limits, RSS, image sizes, and the
    whole environment at once (needs ./local/task images and local/infra.sh start)."""
    from zerorec.bench_containers import main

    sweep = [float(x) for x in cpu_sweep.split(",") if x.strip()]
    raise typer.Exit(main(json_path=json_out, runs=runs, cpu_sweep=sweep))


@bench_app.command("scale")
def bench_scale(
    sizes: Annotated[str, typer.Option(help="comma-separated sizes: S (10k items), M (100k), L (1M)")] = "S",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="also write the figures here, by size")
    ] = None,
) -> None:
    """Synthetic catalogues at each size: train, publish, serve; time, memory, quality per size."""
    from zerorec.bench_scale import main

    raise typer.Exit(main([s.strip().upper() for s in sizes.split(",") if s.strip()], json_out))


@bench_app.command("ingest", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_ingest(ctx: typer.Context) -> None:
    """Ingest benchmark on the real servers (options: python -m zerorec.bench_ingest --help)."""
    from zerorec.bench_ingest import main

    raise typer.Exit(main(list(ctx.args)))


@bench_app.command("soak", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_soak(ctx: typer.Context) -> None:
    """Recommendations and events at fixed rates for --minutes N, with --faults; RSS, errors, lag,
    lost/duplicated (options: python -m zerorec.bench_soak --help)."""
    from zerorec.bench_soak import main

    raise typer.Exit(main(list(ctx.args)))


@bench_app.command("state", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def bench_state(ctx: typer.Context) -> None:
    """Redis bytes per user of the real-time state (--users N [--events-per-user K] [--json FILE])."""
    from zerorec.bench_state import main

    raise typer.Exit(main(list(ctx.args)))


experiment_app = typer.Typer(help="A/B experiments: simulated traffic, CTR by variant.", no_args_is_help=True)
app.add_typer(experiment_app, name="experiment")


@experiment_app.command("report")
def experiment_report_cmd(
    as_json: Annotated[bool, typer.Option("--json", help="print JSON instead of the table")] = False,
    hours: Annotated[int, typer.Option(help="hours of CTR series to read (1..192)")] = 24,
) -> None:
    """CTR per variant with its Wilson 95% interval and the offline metrics of each variant's model."""
    from zerorec.errors import BackendUnavailableError
    from zerorec.experiments import experiment_report, format_report
    from zerorec.settings import get_settings
    from zerorec.storage import kv_store, object_store

    settings = get_settings()
    try:
        report = experiment_report(kv_store(settings), object_store(settings), settings.model_name, hours)
    except BackendUnavailableError as exc:
        typer.echo(f"error: the key-value store is unavailable: {exc}", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(report, indent=2) if as_json else format_report(report))


@experiment_app.command("simulate")
def experiment_simulate_cmd(
    users: Annotated[int, typer.Option(min=1, max=100_000, help="simulated users (one session each)")] = 200,
    recommender: Annotated[str | None, typer.Option(help="BFF URL (ZEROREC_RECOMMENDER_URL)")] = None,
    behavior: Annotated[str, typer.Option(help="behavior function URL")] = "http://127.0.0.1:8086",
    click_rate: Annotated[float, typer.Option(min=0.0, max=1.0, help="click chance at position 1")] = 0.3,
    seed: Annotated[int, typer.Option(help="random seed of the clicks")] = 0,
    user_prefix: Annotated[str, typer.Option(help="simulated user ids: PREFIX0, PREFIX1, ...")] = "sim",
    wait_s: Annotated[float, typer.Option(help="wait for the consumer to count them (0: no)")] = 60,
) -> None:
    """Simulated users against a running stack: recommendation, impression, clicks (POST /events)."""
    import httpx

    from zerorec.experiment_sim import simulate, wait_counted
    from zerorec.settings import get_settings
    from zerorec.storage import kv_store

    settings = get_settings()
    before = None
    kv = kv_store(settings)
    if wait_s > 0:
        from zerorec.ctr import read_ctr

        before = read_ctr(kv, hours=1).overall
    try:
        result = simulate(
            recommender or settings.recommender_url,
            behavior,
            users,
            click_rate=click_rate,
            seed=seed,
            user_prefix=user_prefix,
            api_key=settings.behavior_api_key,
        )
    except httpx.HTTPError as exc:
        typer.echo(f"error: {exc!r} (is the stack running? ./local/task run)", err=True)
        raise typer.Exit(3) from None
    typer.echo(json.dumps(result.to_json()))
    if before is not None and not wait_counted(
        kv, before.impressions + result.impressions, before.clicks + result.clicks, wait_s
    ):
        typer.echo(f"error: the consumer did not count the events within {wait_s} s", err=True)
        raise typer.Exit(4)


if __name__ == "__main__":
    app()
