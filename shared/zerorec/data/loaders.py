"""Loaders: generic CSV/Parquet, MovieLens ml-latest-small and MovieLens 100K (the only I/O here)."""

from __future__ import annotations

import csv
import io
from pathlib import Path

import pandas as pd

from zerorec.data.interactions import normalize_interactions, normalize_items
from zerorec.errors import InvalidInputError, NotFoundError

ML100K_GENRES = [
    "unknown",
    "Action",
    "Adventure",
    "Animation",
    "Children",
    "Comedy",
    "Crime",
    "Documentary",
    "Drama",
    "Fantasy",
    "Film-Noir",
    "Horror",
    "Musical",
    "Mystery",
    "Romance",
    "Sci-Fi",
    "Thriller",
    "War",
    "Western",
]


def _read_table(path: str | Path, what: str) -> pd.DataFrame:
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"{what} file {path} does not exist")
    if path.suffix.lower() in (".parquet", ".pq"):
        return pd.read_parquet(path)
    text = path.read_text(encoding="utf-8")
    reader = csv.reader(io.StringIO(text))
    try:
        header = next(reader)
    except StopIteration:
        raise InvalidInputError(f"{what} file {path} is empty (a header row is required)") from None
    for line_no, row in enumerate(reader, start=2):
        if row and len(row) != len(header):
            raise InvalidInputError(
                f"{what} file {path}, line {line_no}: expected {len(header)} fields "
                f"({','.join(header)}), got {len(row)}: {row!r}"
            )
    return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)


def load_interactions(path: str | Path) -> pd.DataFrame:
    """Read a CSV or Parquet with user_id,item_id,timestamp[,event_type,weight] and normalise it."""
    frame = _read_table(path, "interactions")
    frame = frame.replace("", pd.NA) if len(frame) else frame
    return normalize_interactions(frame, source=str(path))


def load_items(path: str | Path) -> pd.DataFrame:
    """Read item metadata (item_id[,title,categories,created_at,...]); categories '|'-separated."""
    frame = _read_table(path, "items")
    return normalize_items(frame, source=str(path))


def load_user_ids(path: str | Path) -> list[str]:
    """One user id per line; blank lines ignored."""
    path = Path(path)
    if not path.exists():
        raise NotFoundError(f"users file {path} does not exist")
    return [line.strip() for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def load_movielens_small(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """ml-latest-small: (interactions, items). Every rating is a positive; tags become item tags."""
    directory = Path(directory)
    ratings = _read_table(directory / "ratings.csv", "ratings")
    interactions = normalize_interactions(
        ratings.rename(columns={"userId": "user_id", "movieId": "item_id"}).assign(event_type="rating"),
        source=str(directory / "ratings.csv"),
    )
    movies = _read_table(directory / "movies.csv", "movies")
    items = normalize_items(
        movies.rename(columns={"movieId": "item_id", "genres": "categories"}), source="movies.csv"
    )
    tags_path = directory / "tags.csv"
    if tags_path.exists():
        tags = pd.read_csv(tags_path, dtype=str)
        grouped = tags.groupby("movieId")["tag"].agg(lambda s: sorted(set(s.str.lower())))
        items["tags"] = items["item_id"].map(grouped).apply(lambda v: v if isinstance(v, list) else [])
    return interactions, items


def load_movielens_100k(directory: str | Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    """MovieLens 100K layout: u.data (tab-separated), u.item ('|'-separated, latin-1)."""
    directory = Path(directory)
    data_path = directory / "u.data"
    if not data_path.exists():
        raise NotFoundError(f"{data_path} does not exist")
    ratings = pd.read_csv(
        data_path, sep="\t", header=None, names=["user_id", "item_id", "rating", "timestamp"], dtype=str
    )
    interactions = normalize_interactions(ratings.assign(event_type="rating"), source=str(data_path))
    item_path = directory / "u.item"
    if not item_path.exists():
        return interactions, normalize_items(pd.DataFrame({"item_id": interactions["item_id"].unique()}))
    raw = pd.read_csv(item_path, sep="|", header=None, encoding="latin-1", dtype=str)
    flags = raw.iloc[:, 5 : 5 + len(ML100K_GENRES)].astype(int).to_numpy()
    cats = ["|".join(g for g, f in zip(ML100K_GENRES, row, strict=True) if f) for row in flags]
    items = pd.DataFrame({"item_id": raw[0], "title": raw[1], "categories": cats})
    return interactions, normalize_items(items, source=str(item_path))


def load_dataset(path: str | Path) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """Recognise a dataset by its layout: ml-latest-small dir, ML-100K dir, or one interactions file."""
    path = Path(path)
    if path.is_dir():
        if (path / "ratings.csv").exists():
            return load_movielens_small(path)
        if (path / "u.data").exists():
            return load_movielens_100k(path)
        if (path / "interactions.csv").exists():
            items = path / "items.csv"
            return load_interactions(path / "interactions.csv"), (
                load_items(items) if items.exists() else None
            )
        raise InvalidInputError(
            f"{path}: no ratings.csv (ml-latest-small), u.data (ML-100K) or interactions.csv found"
        )
    return load_interactions(path), None
