"""The Spark training engine: the same bundle as `zerorec.pipeline.train_recommender`, with the work
that grows with the data done by Spark.

In Spark: reading and normalising the log (CSV dataset, Parquet event export, local or `s3a://`),
the validation cut (temporal-user-20, as `zerorec.data.split`), implicit ALS (MLlib
`pyspark.ml.recommendation.ALS` on bm25 confidences, as the local engine weighs them), item-CF
(cosine co-occurrence, the top-k neighbours of each item), popularity time bins (the hot channel),
first-seen times (the fresh channel) and the ranker's training rows (each labelled user's merged
candidates and features, computed in Python workers from a broadcast of the validation-cut model,
by the same function as the local engine). On the driver: EASE's solve over the head of the
catalogue (bounded by `ease_max_items`; skipped with a message if the driver still cannot hold it,
`zerorec.resources`), the vector index over the ALS item factors, the hot channel's anchor lists
from the Spark counts, and DeepFM (torch, `device` cpu or cuda) on the Spark-built rows.
MLlib's confidence is 1 + bm25 where implicit's is bm25, and its regParam is scaled per row
(ALS-WR), so `regParam` is the local engine's regularisation over the mean history length.

The bundle keeps every interaction (`history.npz`, `weights.npz` are part of the serving format),
so the driver collects the indexed log once per fit: about 20 bytes per interaction.
`channel_state` is the one place that turns Spark output into channel state (`from_state`).
"""

from __future__ import annotations

import os
import sys
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from zerorec.errors import InvalidInputError, NotFoundError

if TYPE_CHECKING:
    import pandas as pd
    from pyspark.sql import DataFrame, SparkSession

    from zerorec.data.interactions import InteractionData
    from zerorec.pipeline import PipelineConfig, Recommender
    from zerorec.recall.base import RecallChannel

Log = Callable[[str], None]


@dataclass(frozen=True)
class SparkTrainConfig:
    """How the Spark engine runs (the model's hyper-parameters stay in PipelineConfig)."""

    master: str = "local[*]"
    driver_memory: str = "2g"
    shuffle_partitions: int = 8
    # Item-CF counts co-occurrences within each user's newest N items: a user's cost is N^2 pairs,
    # so one heavy user (a bot) cannot dominate the shuffle. Not lower: ml-latest-small's heaviest
    # users (up to 2,698 items) carry signal; a cap of 500 cost 3-6% NDCG@10 there.
    itemcf_max_user_items: int = 5000
    # Users whose held-out items label the ranker's rows (a seeded sample beyond this): bounds the
    # rows the driver holds for torch (about 90 rows of 180 bytes per user).
    ranker_max_users: int = 20_000
    device: str = "cpu"
    progress_period_s: float = 10.0
    conf: dict[str, str] = field(default_factory=dict)


def spark_session(config: SparkTrainConfig) -> SparkSession:
    """A Spark session for training: UTC, no UI, Arrow transfers, the configured master."""
    from pyspark.sql import SparkSession

    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    # Python workers run this interpreter (its numpy, zerorec, ...) unless told otherwise.
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = (
        SparkSession.builder.master(config.master)
        .appName("zerorec-training")
        .config("spark.driver.memory", config.driver_memory)
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")  # SparkProgress prints one line instead
        .config("spark.sql.shuffle.partitions", str(config.shuffle_partitions))
        .config("spark.sql.adaptive.enabled", "true")
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.sql.execution.arrow.maxRecordsPerBatch", "20000")
    )
    if config.master.startswith("local"):
        builder = builder.config("spark.driver.host", "127.0.0.1").config(
            "spark.driver.bindAddress", "127.0.0.1"
        )
    for key, value in config.conf.items():
        builder = builder.config(key, value)
    session = builder.getOrCreate()
    session.sparkContext.setLogLevel("ERROR")
    return session


HADOOP_AWS = "org.apache.hadoop:hadoop-aws:3.4.2"  # the Hadoop client pyspark 4.1.1 bundles


def s3a_conf() -> dict[str, str]:
    """Spark settings to read `s3a://` from the configured S3 endpoint: hadoop-aws (from Maven,
    once, through spark.jars.packages) and the endpoint's credentials."""
    from zerorec.settings import get_settings

    s = get_settings()
    return {
        "spark.jars.packages": HADOOP_AWS,
        "spark.hadoop.fs.s3a.endpoint": s.s3_endpoint,
        "spark.hadoop.fs.s3a.access.key": s.s3_access_key,
        "spark.hadoop.fs.s3a.secret.key": s.s3_secret_key,
        "spark.hadoop.fs.s3a.path.style.access": "true",
        "spark.hadoop.fs.s3a.connection.ssl.enabled": str(s.s3_endpoint.startswith("https")).lower(),
    }


# ------------------------------------------------------------------------------- inputs


def _read_file(spark: SparkSession, path: str) -> DataFrame:
    if path.rstrip("/").endswith((".parquet", ".pq")) or not path.rstrip("/").endswith(".csv"):
        return spark.read.option("recursiveFileLookup", "true").parquet(path)
    return spark.read.option("header", "true").option("encoding", "UTF-8").csv(path)


def read_source(spark: SparkSession, source: str | Path) -> tuple[DataFrame, pd.DataFrame | None]:
    """(raw interactions, item metadata or None) from a dataset or an event export.

    `source`: an ml-latest-small folder (ratings.csv, movies.csv), a folder with interactions.csv
    or interactions.parquet (and items.csv), one CSV/Parquet file, or a folder/URL (`s3a://`) of
    the worker's Parquet export (`<date>/part-*.parquet`, with event_id, kind, timestamp)."""
    from zerorec.data import load_items
    from zerorec.data.interactions import normalize_items

    text = str(source)
    remote = "://" in text
    path = Path(text)
    if not remote and not path.exists():
        raise NotFoundError(f"dataset {text} does not exist")
    items = None
    if not remote and path.is_dir() and (path / "ratings.csv").exists():
        import pandas as pd

        frame = _read_file(spark, str(path / "ratings.csv"))
        frame = frame.withColumnRenamed("userId", "user_id").withColumnRenamed("movieId", "item_id")
        movies = pd.read_csv(path / "movies.csv", dtype=str, keep_default_na=False)
        items = normalize_items(
            movies.rename(columns={"movieId": "item_id", "genres": "categories"}), source="movies.csv"
        )
        return frame, items
    if not remote and path.is_dir():
        for name in ("interactions.csv", "interactions.parquet"):
            if (path / name).exists():
                if (path / "items.csv").exists():
                    items = load_items(path / "items.csv")
                return _read_file(spark, str(path / name)), items
        if not any(path.rglob("*.parquet")):
            raise InvalidInputError(
                f"{path}: no ratings.csv, interactions.csv/.parquet or exported *.parquet found"
            )
    return _read_file(spark, text), items


def normalize(frame: DataFrame, source: str) -> DataFrame:
    """Spark's `normalize_interactions`: string ids, int64 seconds, weight; the export's event_id
    de-duplicated; one row per (user, item), the latest. InvalidInputError names a bad row."""
    from pyspark.sql import functions as F

    cols = set(frame.columns)
    missing = [c for c in ("user_id", "item_id", "timestamp") if c not in cols]
    if missing:
        raise InvalidInputError(f"{source} is missing column(s) {missing}; got columns {sorted(cols)}")
    if "event_id" in cols:  # the export may repeat rows after a crash
        frame = frame.dropDuplicates(["event_id"])
    ts = F.col("timestamp")
    ts_type = dict(frame.dtypes)["timestamp"]
    if ts_type.startswith("timestamp"):
        seconds = F.unix_timestamp(ts)
    else:
        text = ts.cast("string")
        seconds = F.coalesce(
            F.round(text.try_cast("double")).try_cast("long"),
            F.unix_timestamp(F.try_to_timestamp(text)),
        )
    weight = F.col("weight").try_cast("float") if "weight" in cols else F.lit(1.0).cast("float")
    out = frame.select(
        F.trim(F.col("user_id").cast("string")).alias("user_id"),
        F.trim(F.col("item_id").cast("string")).alias("item_id"),
        seconds.alias("timestamp"),
        weight.alias("weight"),
    )
    bad = (
        out.where(
            F.col("user_id").isNull()
            | (F.col("user_id") == "")
            | F.col("item_id").isNull()
            | (F.col("item_id") == "")
            | F.col("timestamp").isNull()
            | F.col("weight").isNull()
            | F.col("user_id").contains("\ufffd")  # Spark's CSV reader replaces bytes that are not UTF-8
            | F.col("item_id").contains("\ufffd")
        )
        .limit(1)
        .collect()
    )
    if bad:
        raise InvalidInputError(
            f"{source}: a row has an empty id or one that is not UTF-8, or a malformed timestamp or "
            f"weight: {bad[0].asDict()}"
        )
    latest = F.max_by(F.struct("timestamp", "weight"), "timestamp")
    return (
        out.groupBy("user_id", "item_id")
        .agg(latest.alias("last"))
        .select("user_id", "item_id", "last.timestamp", "last.weight")
    )


# ------------------------------------------------------------------------------- indexing


@dataclass
class Indexed:
    """An interactions DataFrame with contiguous indices (u, i) and its driver-side matrices."""

    frame: DataFrame  # u int, i int, t long, w float
    data: InteractionData


def index_log(
    spark: SparkSession,
    log: DataFrame,
    vocab: list[str],
    items: pd.DataFrame | None,
    item_created: np.ndarray | None = None,
) -> Indexed:
    """Users sorted as `InteractionData.from_frame` sorts them, items in `vocab` order; the
    indexed log is collected once (the bundle keeps every interaction)."""
    import pandas as pd
    import scipy.sparse as sp
    from pyspark.sql import functions as F

    from zerorec.data.interactions import InteractionData

    user_ids = sorted(r[0] for r in log.select("user_id").distinct().collect())
    users = spark.createDataFrame(
        pd.DataFrame({"user_id": user_ids, "u": np.arange(len(user_ids), dtype=np.int32)})
    )
    item_frame = spark.createDataFrame(
        pd.DataFrame({"item_id": vocab, "i": np.arange(len(vocab), dtype=np.int32)})
    )
    frame = (
        log.join(users, "user_id")
        .join(F.broadcast(item_frame), "item_id")
        .select("u", "i", F.col("timestamp").alias("t"), F.col("weight").alias("w"))
        .persist()
    )
    local = frame.toPandas()
    shape = (len(user_ids), len(vocab))
    rows, cols = local["u"].to_numpy(np.int64), local["i"].to_numpy(np.int64)
    matrix = sp.csr_matrix((local["w"].to_numpy(np.float32), (rows, cols)), shape=shape, dtype=np.float32)
    times = sp.csr_matrix((local["t"].to_numpy(np.float64), (rows, cols)), shape=shape, dtype=np.float64)
    del local
    categories: list[list[str]] = [[] for _ in vocab]
    created = None if item_created is None else item_created.copy()
    if items is not None and len(items):
        pos = {it: k for k, it in enumerate(vocab)}
        for item_id, cats in zip(items["item_id"].tolist(), items["categories"].tolist(), strict=True):
            if item_id in pos:
                categories[pos[item_id]] = list(cats)
    data = InteractionData(
        np.array(user_ids, dtype=object), np.array(vocab, dtype=object), matrix, times, categories, created
    )
    return Indexed(frame, data)


def first_seen(log: DataFrame, vocab: list[str], items: pd.DataFrame | None) -> np.ndarray:
    """Per item of `vocab`: the catalogue's created_at when given (> 0), else its first interaction
    (items never seen: the newest interaction time), as the fresh channel and features expect."""
    from pyspark.sql import functions as F

    rows = log.groupBy("item_id").agg(F.min("timestamp").alias("t")).collect()
    newest = log.agg(F.max("timestamp")).collect()[0][0] or 0
    pos = {it: k for k, it in enumerate(vocab)}
    out = np.full(len(vocab), int(newest), dtype=np.int64)
    for r in rows:
        if r["item_id"] in pos:
            out[pos[r["item_id"]]] = int(r["t"])
    if items is not None and "created_at" in items.columns:
        for item_id, given in zip(items["item_id"].tolist(), items["created_at"].tolist(), strict=True):
            if item_id in pos and int(given) > 0:
                out[pos[item_id]] = int(given)
    return out


def validation_cut(log: DataFrame, test_fraction: float = 0.2, min_interactions: int = 5) -> DataFrame:
    """`log` with `held` (bool): `zerorec.data.split.temporal_user_split` in Spark (per user, by
    timestamp then item id, numerically when every item id is an integer)."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    numeric = log.where(F.col("item_id").try_cast("long").isNull()).limit(1).count() == 0
    key = F.col("item_id").try_cast("long") if numeric else F.col("item_id")
    by_user = Window.partitionBy("user_id")
    ordered = by_user.orderBy("timestamp", key)
    size = F.count(F.lit(1)).over(by_user)
    position = F.row_number().over(ordered) - 1
    n_test = F.greatest(F.lit(1), F.floor(size * test_fraction + 1e-9)).cast("long")
    return log.withColumn("held", (size >= min_interactions) & (position >= size - n_test))


# ------------------------------------------------------------------------------- channels in Spark


def bm25(frame: DataFrame, n_users: int, k1: float = 100.0, b: float = 0.8) -> DataFrame:
    """implicit's `bm25_weight` of the binary user x item matrix, as a column `c`."""
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df_item = F.count(F.lit(1)).over(Window.partitionBy("i"))
    row_len = F.count(F.lit(1)).over(Window.partitionBy("u"))
    avg_len = frame.count() / max(n_users, 1)
    idf = F.log(F.lit(float(n_users))) - F.log1p(df_item)
    norm = (1.0 - b) + b * row_len / F.lit(avg_len)
    return frame.select("u", "i", (F.lit(k1 + 1.0) / (F.lit(k1) * norm + 1.0) * idf).alias("c"))


def spark_als(frame: DataFrame, n_users: int, n_items: int, config: PipelineConfig) -> np.ndarray:
    """Item factors of implicit ALS in MLlib (rows of items without interactions stay 0; serving
    solves a user's vector from the history, so user factors stay in Spark).

    implicit's confidence is its (bm25) weight and its regularisation a constant; MLlib's
    confidence is 1 + alpha * rating and it scales regParam by each row's count (ALS-WR), so the
    constant is divided by the mean count to regularise about as much."""
    from pyspark.ml.recommendation import ALS

    nnz = frame.count()
    ratings = bm25(frame, n_users) if config.als_bm25 else frame.select("u", "i", frame["w"].alias("c"))
    als = ALS(
        rank=config.als_factors,
        maxIter=config.als_iterations,
        regParam=config.als_regularization / max(nnz / max(n_users, 1), 1.0),
        implicitPrefs=True,
        alpha=1.0,
        userCol="u",
        itemCol="i",
        ratingCol="c",
        seed=config.seed,
        nonnegative=False,
        # One block per core: MLlib's default of 10 costs scheduling overhead on a small cluster.
        numUserBlocks=max(2, frame.sparkSession.sparkContext.defaultParallelism),
        numItemBlocks=max(2, frame.sparkSession.sparkContext.defaultParallelism),
    )
    model = als.fit(ratings)
    return _factors(model.itemFactors, n_items, config.als_factors)


def _factors(frame: DataFrame, n: int, rank: int) -> np.ndarray:
    out = np.zeros((n, rank), dtype=np.float32)
    local = frame.toPandas()
    if len(local):
        out[local["id"].to_numpy(np.int64)] = np.stack(local["features"].to_numpy()).astype(np.float32)
    return out


def spark_itemcf(frame: DataFrame, n_items: int, k: int, max_user_items: int) -> Any:
    """Item-item cosine over binary interactions (co-occurrences / sqrt(n_i n_j)), each item's
    k - 1 best neighbours (implicit's top-k counts the item itself), as a CSR matrix."""
    import scipy.sparse as sp
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    newest = Window.partitionBy("u").orderBy(F.col("t").desc(), F.col("i"))
    capped = frame.withColumn("r", F.row_number().over(newest)).where(F.col("r") <= max_user_items)
    basket = capped.select("u", "i").persist()
    counts = frame.groupBy("i").agg(F.count(F.lit(1)).alias("n"))
    a, b = basket.alias("a"), basket.alias("b")
    pairs = (
        a.join(b, F.col("a.u") == F.col("b.u"))
        .where(F.col("a.i") != F.col("b.i"))
        .groupBy(F.col("a.i").alias("i"), F.col("b.i").alias("j"))
        .agg(F.count(F.lit(1)).alias("co"))
    )
    ni, nj = counts.alias("ni"), counts.withColumnRenamed("i", "j").withColumnRenamed("n", "m").alias("nj")
    sim = (
        pairs.join(F.broadcast(ni), "i")
        .join(F.broadcast(nj), "j")
        .select("i", "j", (F.col("co") / F.sqrt(F.col("n") * F.col("m"))).alias("s"))
    )
    best = Window.partitionBy("i").orderBy(F.col("s").desc(), F.col("j"))
    top = sim.withColumn("r", F.row_number().over(best)).where(F.col("r") < k).select("i", "j", "s")
    local = top.toPandas()
    basket.unpersist()
    return sp.csr_matrix(
        (local["s"].to_numpy(np.float32), (local["i"].to_numpy(np.int64), local["j"].to_numpy(np.int64))),
        shape=(n_items, n_items),
        dtype=np.float32,
    )


def spark_hot_counts(frame: DataFrame, n_items: int, bin_days: float) -> tuple[Any, float]:
    """(items x bins interaction counts, origin): the hot channel's time-binned popularity."""
    import scipy.sparse as sp
    from pyspark.sql import functions as F

    origin = frame.agg(F.min("t")).collect()[0][0]
    origin = float(origin) if origin is not None else 0.0
    width = bin_days * 86_400
    local = (
        frame.select(F.floor((F.col("t") - F.lit(origin)) / F.lit(width)).cast("long").alias("b"), "i")
        .groupBy("b", "i")
        .agg(F.count(F.lit(1)).cast("float").alias("n"))
        .toPandas()
    )
    n_bins = int(local["b"].max()) + 1 if len(local) else 1
    counts = sp.csr_matrix(
        (local["n"].to_numpy(np.float32), (local["i"].to_numpy(np.int64), local["b"].to_numpy(np.int64))),
        shape=(n_items, n_bins),
        dtype=np.float32,
    )
    return counts, origin


def channel_state(
    name: str, params: Mapping[str, Any], spark_out: Mapping[str, Any], data: InteractionData
) -> RecallChannel:
    """A fitted channel from what Spark computed, through the bundle format of
    `zerorec.recall.channels` (its module doc lists each channel's files): the one place that
    follows that format. `spark_out`: als {item_factors}, itemcf {similarity CSR}, hot {counts
    items x bins, origin, category_items, category_names}."""
    from zerorec.recall.channels import CHANNELS
    from zerorec.recall.index import NeighbourLists

    params = dict(params)
    if name == "als":
        y16 = np.asarray(spark_out["item_factors"], dtype=np.float16)
        y = y16.astype(np.float64)
        users_per_item = np.bincount(data.matrix.indices, minlength=data.n_items)
        arrays = {
            "item_factors": y16,
            "yty": y.T @ y,
            "idf": (np.log(float(max(data.n_users, 1))) - np.log1p(users_per_item)).astype(np.float32),
        }
        params["mean_length"] = data.matrix.nnz / max(data.n_users, 1)
    elif name == "itemcf":
        lists = NeighbourLists.from_csr(spark_out["similarity"], int(params["k"]))
        arrays = {"neighbours": lists.neighbours, "weights": lists.weights}
    elif name == "hot":
        arrays = {**spark_out, "anchors": np.zeros(0), "anchor_items": np.zeros((0, 0), np.int32)}
        arrays["category_top"] = np.zeros((0, 0), np.int32)
    else:
        arrays = dict(spark_out)
    channel = CHANNELS[name].from_state(params, arrays)
    channel.n_items = data.n_items
    channel.default_now = data.max_time()
    if name == "hot":
        channel._build_lists()  # anchor and category lists from the Spark counts (as `fit` builds them)
    return channel


def fit_channels_spark(
    ix: Indexed,
    config: PipelineConfig,
    spark_config: SparkTrainConfig,
    say: Log,
) -> dict[str, RecallChannel]:
    """Every channel of `zerorec.pipeline.make_channels`, the heavy ones in Spark."""
    from zerorec.pipeline import make_channels
    from zerorec.recall.channels import HotChannel
    from zerorec.resources import MemoryLimitError

    data, frame = ix.data, ix.frame
    made = make_channels(config)
    channels: dict[str, RecallChannel] = {}
    say("fit ease (driver)")
    try:
        channels["ease"] = made["ease"].fit(data)
    except MemoryLimitError as exc:
        say(f"ease skipped, the driver cannot hold it: {exc}")
    say("fit als (Spark MLlib)")
    item_f = spark_als(frame, data.n_users, data.n_items, config)
    channels["als"] = channel_state("als", made["als"].params(), {"item_factors": item_f}, data)
    say("fit itemcf (Spark co-occurrence, top-k per item)")
    sim = spark_itemcf(frame, data.n_items, config.itemcf_k, spark_config.itemcf_max_user_items)
    channels["itemcf"] = channel_state("itemcf", made["itemcf"].params(), {"similarity": sim}, data)
    say("fit vector (faiss over the ALS item factors)")
    channels["vector"] = made["vector"].fit(data, item_f)
    say("fit hot (Spark time bins)")
    hot = made["hot"]
    assert isinstance(hot, HotChannel)
    counts, origin = spark_hot_counts(frame, data.n_items, hot.bin_days)
    categories = HotChannel(hot.tau_days, hot.bin_days).fit(_no_interactions(data))  # category table only
    channels["hot"] = channel_state(
        "hot",
        hot.params(),
        {
            "counts": counts,
            "origin": np.array([origin]),
            "category_items": categories.category_items,
            "category_names": np.array(categories.category_names, dtype=np.str_),
        },
        data,
    )
    say("fit fresh")
    channels["fresh"] = made["fresh"].fit(data)
    return {name: channels[name] for name in made if name in channels}


def _no_interactions(data: InteractionData) -> InteractionData:
    """`data`'s vocabulary and categories without interactions (HotChannel's category table)."""
    import scipy.sparse as sp

    from zerorec.data.interactions import InteractionData

    empty = sp.csr_matrix((0, data.n_items), dtype=np.float32)
    return InteractionData(
        np.zeros(0, dtype=object),
        data.item_ids,
        empty,
        empty.astype(np.float64),
        data.item_categories,
        data.item_created,
    )


# ------------------------------------------------------------------------------- ranker rows


_WORKER_MODELS: dict[str, Any] = {}  # model key -> Recommender, one load per Python worker


def _ranker_rows_udf(
    files_bc: Any, key: str, seed: int
) -> Callable[[Iterator[pd.DataFrame]], Iterator[pd.DataFrame]]:
    """A mapInPandas function: (u, pos) per labelled user -> (u, hit, n, sparse, dense, labels), the
    rows as raw little-endian bytes (one row per user: few, large Arrow cells)."""

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        import pandas as pd
        from threadpoolctl import threadpool_limits

        from zerorec.pipeline import Recommender, _user_ranker_rows

        rec = _WORKER_MODELS.get(key)
        if rec is None:
            _WORKER_MODELS.clear()  # a reused worker drops the previous training's model
            rec = _WORKER_MODELS[key] = Recommender.from_files(files_bc.value)
        with threadpool_limits(1, "blas"):
            for batch in batches:
                out = []
                for user, pos in zip(batch["u"].tolist(), batch["pos"].tolist(), strict=True):
                    rng = np.random.default_rng([seed, int(user)])
                    hit, part = _user_ranker_rows(rec, int(user), np.asarray(pos, np.int64), rng)
                    if part is None:
                        out.append((user, hit, 0, b"", b"", b""))
                        continue
                    s, d, y, _ = part
                    out.append(
                        (
                            user,
                            hit,
                            len(y),
                            s.astype("<i8").tobytes(),
                            d.astype("<f4").tobytes(),
                            y.astype("<f4").tobytes(),
                        )
                    )
                yield pd.DataFrame(out, columns=["u", "hit", "n", "sparse", "dense", "labels"])

    return run


def spark_ranker_rows(
    spark: SparkSession,
    inner: Indexed,
    held: DataFrame,
    rec_files: dict[str, bytes],
    config: PipelineConfig,
    spark_config: SparkTrainConfig,
) -> tuple[Any, float]:
    """The ranker's training rows (`zerorec.pipeline.RankerData`) and the candidate recall, built
    per user in Spark's Python workers from a broadcast of the validation-cut model."""
    from pyspark.sql import functions as F

    from zerorec.pipeline import RankerData, ranker_widths
    from zerorec.resources import RANKER_ROW_BYTES, require_memory

    labels = (
        held.groupBy("u")
        .agg(F.sort_array(F.collect_list("i")).alias("pos"))
        .orderBy(F.xxhash64("u", F.lit(config.seed)))
        .limit(spark_config.ranker_max_users)
    )
    n_users = labels.count()
    rows_per_user = config.hard_negatives + config.random_negatives + held.count() / max(n_users, 1)
    require_memory(
        "ranker training rows (driver)",
        int(2 * RANKER_ROW_BYTES * n_users * rows_per_user),
        f"{n_users:,} users; lower ranker_max_users",
    )
    bc = spark.sparkContext.broadcast(rec_files)
    parts = max(spark.sparkContext.defaultParallelism * 2, 2)
    schema = "u int, hit double, n long, sparse binary, dense binary, labels binary"
    built = labels.repartition(parts, "u").mapInPandas(
        _ranker_rows_udf(bc, uuid.uuid4().hex, config.seed), schema
    )
    local = built.toPandas().sort_values("u", kind="stable")
    bc.unpersist()
    n_sparse, n_dense = ranker_widths()
    keep = local[local["n"] > 0]
    sparse = np.frombuffer(b"".join(keep["sparse"]), dtype="<i8").reshape(-1, n_sparse)
    dense = np.frombuffer(b"".join(keep["dense"]), dtype="<f4").reshape(-1, n_dense)
    y = np.frombuffer(b"".join(keep["labels"]), dtype="<f4")
    groups = np.repeat(keep["u"].to_numpy(np.int64), keep["n"].to_numpy(np.int64))
    recall = float(local["hit"].mean()) if len(local) else 0.0
    return RankerData(sparse.astype(np.int64), dense.astype(np.float32), y.astype(np.float32), groups), recall


# ------------------------------------------------------------------------------- the engine


def _as_spark_frame(spark: SparkSession, interactions: pd.DataFrame) -> DataFrame:
    cols = [c for c in ("user_id", "item_id", "timestamp", "weight") if c in interactions.columns]
    return spark.createDataFrame(interactions[cols])


def train_spark(
    source: str | Path | pd.DataFrame,
    items: pd.DataFrame | None = None,
    config: PipelineConfig | None = None,
    spark_config: SparkTrainConfig | None = None,
    log: Log | None = None,
    train_ranker: bool = True,
    spark: SparkSession | None = None,
) -> tuple[Recommender, dict[str, Any]]:
    """`zerorec.pipeline.train_recommender` on Spark: (recommender, info) for the same bundle.

    `source`: a dataset path or URL (see `read_source`) or a normalised interactions frame.
    `spark`: reuse a session (else one is made from `spark_config`, then stopped)."""
    from zerorec.pipeline import PipelineConfig, Recommender, _train_ranker
    from zerorec.training.progress import SparkProgress, StageLog

    config = config or PipelineConfig()
    spark_config = spark_config or SparkTrainConfig()
    say = log or StageLog()
    t0 = time.perf_counter()
    say(f"starting Spark ({spark_config.master})")
    if spark is None:  # a session already running in this process is reused, and left running
        from pyspark.sql import SparkSession

        spark = SparkSession.getActiveSession()
    own = spark is None
    if own and isinstance(source, str) and source.startswith("s3a://"):
        spark_config = replace(spark_config, conf={**s3a_conf(), **spark_config.conf})
    session = spark or spark_session(spark_config)
    session.conf.set("spark.sql.execution.arrow.pyspark.enabled", "true")
    emit = getattr(say, "emit", None) or (lambda line: say(line))
    try:
        with SparkProgress(session.sparkContext, emit, spark_config.progress_period_s):
            say("reading and normalising the interactions")
            if isinstance(source, str | Path):
                raw, found_items = read_source(session, source)
                items = items if items is not None else found_items
                name = str(source)
            else:
                raw, name = _as_spark_frame(session, source), "interactions"
            log_df = normalize(raw, name).persist()
            if log_df.limit(1).count() == 0:
                raise InvalidInputError("no interactions to train on")
            names = {r[0] for r in log_df.select("item_id").distinct().collect()}
            if items is not None:
                names |= set(items["item_id"].tolist())
            vocab = sorted(names)
            info: dict[str, Any] = {
                "config": config.to_json(),
                "engine": "spark",
                "master": spark_config.master,
            }
            onnx_bytes = None
            if train_ranker:
                say("validation cut (Spark)")
                cut = validation_cut(log_df).persist()
                inner_log = cut.where(~cut["held"]).drop("held")
                inner = index_log(session, inner_log, vocab, items, first_seen(inner_log, vocab, items))
                held_ix = index_held(session, cut.where(cut["held"]), inner)
                say("fitting channels on the validation cut")
                inner_channels = fit_channels_spark(inner, config, spark_config, say)
                say("building ranker training data (Spark workers)")
                rec_files = Recommender(inner.data, inner_channels, config).to_files()
                del inner_channels
                rd, cand_recall = spark_ranker_rows(session, inner, held_ix, rec_files, config, spark_config)
                del rec_files
                info["validation_candidate_recall"] = cand_recall
                info["ranker_rows"] = len(rd.labels)
                say(f"training DeepFM on {len(rd.labels):,} rows ({spark_config.device})")
                onnx_bytes, ranker_info = train_ranker_on(
                    rd, inner.data, config, spark_config.device, _train_ranker
                )
                info.update(ranker_info)
                inner.frame.unpersist()
                cut.unpersist()
            say("fitting channels on all interactions")
            full = index_log(session, log_df, vocab, items, first_seen(log_df, vocab, items))
            channels = fit_channels_spark(full, config, spark_config, say)
            full.frame.unpersist()
            stats = (
                log_df.agg({"timestamp": "min"}).collect()[0][0],
                log_df.agg({"timestamp": "max"}).collect()[0][0],
            )
            n_interactions = full.data.matrix.nnz
            log_df.unpersist()
    finally:
        if own:
            session.stop()
    data = full.data
    info["train_seconds"] = time.perf_counter() - t0
    info["data_window"] = {
        "start": int(stats[0]),
        "end": int(stats[1]),
        "interactions": int(n_interactions),
        "users": data.n_users,
        "items": data.n_items,
    }
    if isinstance(say, StageLog):
        info["stage_seconds"] = say.summary()
    return Recommender(data, channels, config, onnx_bytes), info


def index_held(spark: SparkSession, held: DataFrame, inner: Indexed) -> DataFrame:
    """The held-out rows as (u, i) in the validation cut's indices (users the cut knows)."""
    import pandas as pd
    from pyspark.sql import functions as F

    data = inner.data
    users = spark.createDataFrame(
        pd.DataFrame({"user_id": data.user_ids.tolist(), "u": np.arange(data.n_users, dtype=np.int32)})
    )
    item_frame = spark.createDataFrame(
        pd.DataFrame({"item_id": data.item_ids.tolist(), "i": np.arange(data.n_items, dtype=np.int32)})
    )
    return held.join(users, "user_id").join(F.broadcast(item_frame), "item_id").select("u", "i")


def train_ranker_on(
    rd: Any, data: InteractionData, config: PipelineConfig, device: str, train: Callable[..., Any]
) -> tuple[bytes, dict[str, Any]]:
    """The local engine's ranker training (`train`, i.e. `zerorec.pipeline._train_ranker`) with torch
    on `device`: cpu, or cuda when torch sees a GPU (an InvalidInputError when it does not)."""
    import torch

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InvalidInputError(f"--device {device}: torch sees no CUDA device on this machine")
    if device == "cpu":
        return train(rd, data, config, False)
    from zerorec.ranking import deepfm

    with deepfm.default_device(device):
        return train(rd, data, config, False)
