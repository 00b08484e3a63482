"""The must-show check through `zerorec recommend-batch`, and the shuffled-timestamp dataset.

    python docs/evaluation/features/recommend_batch_check.py DATASET WORKDIR [--shuffle-to DIR]

Cuts DATASET by temporal-user-20, feeds the train part (and the item genres) to
`zerorec recommend-batch`, scores its top 20 on the held-out part (never a seen item).
`--shuffle-to DIR` first writes DATASET with its timestamps permuted (seed 0: an order that carries
no signal) to DIR and checks that one instead.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
from zerorec.data import load_dataset
from zerorec.data.split import temporal_user_split
from zerorec.evaluation import ranking_metrics


def shuffled_copy(dataset: Path, out: Path) -> Path:
    """ml-latest-small with its timestamp column permuted (seed 0)."""
    out.mkdir(parents=True, exist_ok=True)
    ratings = pd.read_csv(dataset / "ratings.csv")
    ratings["timestamp"] = np.random.default_rng(0).permutation(ratings["timestamp"].to_numpy())
    ratings.to_csv(out / "ratings.csv", index=False)
    (out / "movies.csv").write_bytes((dataset / "movies.csv").read_bytes())
    return out


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("dataset", type=Path)
    p.add_argument("work", type=Path)
    p.add_argument("--shuffle-to", type=Path)
    a = p.parse_args()
    dataset = shuffled_copy(a.dataset, a.shuffle_to) if a.shuffle_to else a.dataset
    work = a.work
    work.mkdir(parents=True, exist_ok=True)
    interactions, items = load_dataset(dataset)
    train, test = temporal_user_split(interactions)
    train[["user_id", "item_id", "timestamp"]].to_csv(work / "train.csv", index=False)
    items[["item_id"]].assign(categories=items["categories"].map("|".join)).to_csv(
        work / "items.csv", index=False
    )
    users = sorted(set(test["user_id"]) & set(train["user_id"]))
    (work / "users.txt").write_text("\n".join(users) + "\n")
    cmd = [sys.executable, "-m", "zerorec.cli", "recommend-batch", "--interactions", str(work / "train.csv")]
    cmd += ["--users", str(work / "users.txt"), "--items", str(work / "items.csv"), "--k", "20"]
    subprocess.run([*cmd, "--out", str(work / "recs.csv")], check=True)
    recs = pd.read_csv(work / "recs.csv", dtype=str).groupby("user_id")["item_id"].apply(list).to_dict()
    truth = test.groupby("user_id")["item_id"].apply(list).to_dict()
    seen = train.groupby("user_id")["item_id"].apply(set).to_dict()
    if any(set(recs.get(u, [])) & seen[u] for u in users):
        raise SystemExit("a seen item was recommended")
    vocab: dict[str, int] = {}
    rows = np.array(
        [[vocab.setdefault(i, len(vocab)) for i in (recs.get(u, []) + ["-"] * 20)[:20]] for u in users]
    )
    held = [np.array([vocab.setdefault(i, len(vocab)) for i in truth[u]]) for u in users]
    print({k: round(v, 4) for k, v in ranking_metrics(rows, held).items()})


if __name__ == "__main__":
    main()
