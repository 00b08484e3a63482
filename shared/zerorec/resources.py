"""Memory guard of the single-process trainer: refuse with a clear error before native code runs out.

EASE's dense item x item matrices, the gram, ALS and the ranker's training rows are allocated by
numpy, OpenBLAS/LAPACK and implicit; when memory runs out inside them the process dies with a
signal (SIGSEGV from an unchecked allocation, SIGKILL from the OOM killer) and no message. Every
estimate here is what the stage allocates at its peak (derived from the code in
`zerorec.recall.channels` and `zerorec.pipeline`); `require_memory` compares it with what the
process may still use and raises `MemoryLimitError`, which names the stage, the size, the limit and
the way out (`zerorec train --engine spark`).

The limit is the tightest of: the cgroup's memory limit minus its usage (v2 `memory.max`, v1
`memory/memory.limit_in_bytes`), the kernel's MemAvailable, and RLIMIT_AS minus the address space
in use (`ulimit -v`); scaled by `settings.train_memory_fraction`.
"""

from __future__ import annotations

import resource
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING

from zerorec.errors import InvalidInputError

if TYPE_CHECKING:
    import pandas as pd

GIB = 1024**3
CGROUP = Path("/sys/fs/cgroup")
PROC = Path("/proc")
_UNLIMITED = 1 << 60  # cgroup v1 writes ~2**63 for "no limit"

# Ranker rows: sparse int64 [6], dense float32 [26], a label float32 and a group int64 per row;
# held twice while the per-user parts are concatenated.
RANKER_ROW_BYTES = 6 * 8 + 26 * 4 + 4 + 8


class MemoryLimitError(InvalidInputError):
    """A training stage needs more memory than this process may use (the input is too large for
    the single-process engine). An InvalidInputError: callers report it as they report bad input."""


@dataclass(frozen=True)
class MemoryBudget:
    """Bytes this process may still allocate, and where that limit comes from (for messages)."""

    available: int
    source: str


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return None
    try:
        value = int(text)
    except ValueError:
        return None
    return value if value < _UNLIMITED else None


def _own_cgroup_dirs(root: Path, proc: Path) -> tuple[Path | None, Path | None]:
    """(cgroup v2 dir, cgroup v1 memory dir) of this process, where they exist."""
    v2 = v1 = None
    try:
        lines = (proc / "self" / "cgroup").read_text().splitlines()
    except OSError:
        lines = []
    for line in lines:
        parts = line.split(":", 2)
        if len(parts) != 3:
            continue
        hier, controllers, rel = parts
        rel = rel.lstrip("/")
        if hier == "0" and controllers == "":
            v2 = root / rel if (root / rel / "memory.max").exists() else root
        elif "memory" in controllers.split(","):
            v1 = root / "memory" / rel if (root / "memory" / rel).exists() else root / "memory"
    return v2, v1


def _cgroup_room(root: Path, proc: Path) -> tuple[int, str] | None:
    v2, v1 = _own_cgroup_dirs(root, proc)
    candidates = []
    if v2 is not None:
        candidates.append((v2 / "memory.max", v2 / "memory.current", "cgroup memory.max"))
    if v1 is not None:
        candidates.append(
            (v1 / "memory.limit_in_bytes", v1 / "memory.usage_in_bytes", "cgroup memory.limit_in_bytes")
        )
    candidates += [
        (root / "memory.max", root / "memory.current", "cgroup memory.max"),
        (
            root / "memory" / "memory.limit_in_bytes",
            root / "memory" / "memory.usage_in_bytes",
            "cgroup memory.limit_in_bytes",
        ),
    ]
    for limit_file, usage_file, name in candidates:
        limit = _read_int(limit_file)
        if limit is None:
            continue
        used = _read_int(usage_file) or 0
        return max(limit - used, 0), f"{name} {_gib(limit)} ({_gib(used)} in use)"
    return None


def _meminfo_available(proc: Path) -> int | None:
    try:
        for line in (proc / "meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def _address_space_room(proc: Path) -> tuple[int, str] | None:
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        for line in (proc / "self" / "status").read_text().splitlines():
            if line.startswith("VmSize:"):
                used = int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return max(soft - used, 0), f"address-space limit (ulimit -v) {_gib(soft)} ({_gib(used)} mapped)"


def available_memory(root: Path = CGROUP, proc: Path = PROC) -> MemoryBudget:
    """The tightest of the cgroup's room, MemAvailable and RLIMIT_AS's room (see the module doc)."""
    limits: list[tuple[int, str]] = []
    cgroup = _cgroup_room(root, proc)
    if cgroup is not None:
        limits.append(cgroup)
    avail = _meminfo_available(proc)
    if avail is not None:
        limits.append((avail, f"MemAvailable {_gib(avail)}"))
    rlimit = _address_space_room(proc)
    if rlimit is not None:
        limits.append(rlimit)
    if not limits:  # no /proc (not Linux): nothing to compare with, so nothing is refused
        return MemoryBudget(_UNLIMITED, "unknown (no /proc/meminfo)")
    room, source = min(limits)
    return MemoryBudget(room, source)


def _gib(n: float) -> str:
    return f"{n / GIB:.1f} GiB"


def _fraction() -> float:
    from zerorec.settings import get_settings

    return get_settings().train_memory_fraction


def require_memory(stage: str, need: int, what: str = "", budget: MemoryBudget | None = None) -> None:
    """MemoryLimitError unless `need` bytes fit in the budget (default: `available_memory()` times
    `settings.train_memory_fraction`); `what` says what is being allocated, for the message."""
    budget = budget or available_memory()
    allowed = int(budget.available * _fraction())
    if need <= allowed:
        return
    detail = f" ({what})" if what else ""
    raise MemoryLimitError(
        f"{stage} needs about {_gib(need)}{detail} but this process may use {_gib(allowed)} "
        f"(limit: {budget.source}, times ZEROREC_TRAIN_MEMORY_FRACTION {_fraction():g}); refused "
        "before allocating. Train with the Spark engine (`zerorec train --engine spark`), give the "
        "process more memory, or shrink the catalogue (e.g. a higher ease_min_count)."
    )


# ---- what each stage allocates at its peak --------------------------------------------------


def ease_fit_bytes(n_kept: int, chunk: int = 4096) -> int:
    """EASEChannel.fit: the float32 gram plus GEMM's temporary, the Cholesky factor, the inverse's
    triangles and B (five n x n float32 matrices at the peak), and one dense block of users."""
    return 5 * 4 * n_kept * n_kept + 2 * 4 * chunk * n_kept


def als_fit_bytes(n_users: int, n_items: int, nnz: int, factors: int) -> int:
    """implicit ALS: user and item factors (and their Gram/solver scratch), the bm25-weighted
    matrix and its transpose (CSR: value + index per entry)."""
    return 3 * 4 * factors * (n_users + n_items) + 3 * 8 * nnz + 16 * (n_users + n_items)


def itemcf_fit_bytes(n_items: int, nnz: int, k: int) -> int:
    """implicit's cosine KNN: the normalised matrix and its transpose, and k neighbours per item."""
    return 3 * 8 * nnz + 2 * 12 * k * n_items


def ranker_rows_bytes(n_users: int, rows_per_user: float) -> int:
    """The ranker's training rows (per-user parts, then their concatenation)."""
    return int(2 * RANKER_ROW_BYTES * n_users * rows_per_user)


@dataclass(frozen=True)
class TrainingSize:
    """What the memory of a training depends on, read off the interactions."""

    n_users: int
    n_items: int
    nnz: int
    ease_items: int  # items EASE keeps (>= ease_min_count users)


def training_size(
    interactions: pd.DataFrame, items: pd.DataFrame | None, ease_min_count: int
) -> TrainingSize:
    """Sizes of a normalised interactions frame (one row per user-item pair)."""
    counts = interactions["item_id"].value_counts()
    n_items = len(counts)
    if items is not None:
        n_items = len(set(counts.index.tolist()) | set(items["item_id"].tolist()))
    return TrainingSize(
        n_users=int(interactions["user_id"].nunique()),
        n_items=n_items,
        nnz=len(interactions),
        ease_items=int((counts >= ease_min_count).sum()),
    )


def stage_estimates(size: TrainingSize, config: object) -> dict[str, tuple[int, str]]:
    """Peak bytes per stage of `train_recommender` for a PipelineConfig-like `config`, with what
    each allocates. The refit of EASE on all data runs while the validation cut's EASE is still
    held, so that stage counts one more n x n float32 matrix."""
    n = size.ease_items
    factors = int(getattr(config, "als_factors", 64))
    k = int(getattr(config, "itemcf_k", 50))
    negatives = int(getattr(config, "hard_negatives", 60)) + int(getattr(config, "random_negatives", 20))
    positives = max(1.0, 0.2 * size.nnz / max(size.n_users, 1))
    return {
        "EASE fit": (
            ease_fit_bytes(n) + 4 * n * n,
            f"dense {n:,} x {n:,} item matrices for EASE",
        ),
        "ALS fit": (
            als_fit_bytes(size.n_users, size.n_items, size.nnz, factors),
            f"{size.n_users:,} users, {size.n_items:,} items, {factors} factors",
        ),
        "item-CF fit": (itemcf_fit_bytes(size.n_items, size.nnz, k), f"{k} neighbours per item"),
        "ranker training rows": (
            ranker_rows_bytes(size.n_users, negatives + positives),
            f"~{negatives + positives:.0f} rows for each of {size.n_users:,} users",
        ),
    }


def check_training_memory(
    interactions: pd.DataFrame,
    items: pd.DataFrame | None,
    config: object,
    budget: MemoryBudget | None = None,
) -> dict[str, int]:
    """Refuse (MemoryLimitError) before any fit when a stage of the single-process training would
    not fit in memory; returns the estimates (bytes per stage) when every one fits."""
    size = training_size(interactions, items, int(getattr(config, "ease_min_count", 3)))
    cap = getattr(config, "ease_max_items", None)  # EASE fits the most popular items only
    if cap is not None:
        size = replace(size, ease_items=min(size.ease_items, int(cap)))
    budget = budget or available_memory()
    estimates = stage_estimates(size, config)
    for stage, (need, what) in estimates.items():
        require_memory(stage, need, what, budget)
    return {stage: need for stage, (need, _) in estimates.items()}
