"""`zerorec experiment simulate`: simulated users against a running stack, so an experiment's events flow.

Each simulated user asks the BFF for a recommendation, posts an impression for it and clicks
items through `POST /events` (clicks carrying the recommendation_id), exactly as a client would; the
consumer then counts them. The click model is a position-biased random clicker (probability
`click_rate / sqrt(position)`, seeded): it exercises the plumbing and the report, it does not
make one arm better than the other, so the arms' intervals should overlap.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx


@dataclass
class SimResult:
    requests: int = 0
    impressions: int = 0  # item impressions posted
    clicks: int = 0
    variants: dict[str, int] | None = None
    event_errors: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "requests": self.requests,
            "impressions": self.impressions,
            "clicks": self.clicks,
            "variants": self.variants or {},
            "event_errors": self.event_errors,
        }


def _now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def simulate(
    recommender_url: str,
    behavior_url: str,
    users: int = 200,
    n: int = 10,
    click_rate: float = 0.3,
    seed: int = 0,
    user_prefix: str = "sim",
    api_key: str = "",
    timeout_s: float = 10.0,
) -> SimResult:
    """Run `users` simulated sessions; bad URLs raise httpx errors with the address."""
    rng = random.Random(seed)
    out = SimResult(variants={})
    headers = {"x-api-key": api_key} if api_key else {}
    with httpx.Client(timeout=timeout_s, headers=headers) as client:
        for k in range(users):
            user = f"{user_prefix}{k}"
            resp = client.post(f"{recommender_url.rstrip('/')}/recommend", json={"user_id": user, "n": n})
            resp.raise_for_status()
            answer = resp.json()
            out.requests += 1
            out.variants[answer["variant"]] = out.variants.get(answer["variant"], 0) + 1  # type: ignore[index]
            if not answer["items"]:
                continue
            events: list[dict[str, Any]] = [
                {
                    "kind": "impression",
                    "user_id": user,
                    "recommendation_id": answer["recommendation_id"],
                    "timestamp": _now(),
                }
            ]
            for item in answer["items"]:
                if rng.random() < click_rate / item["position"] ** 0.5:
                    events.append(
                        {
                            "kind": "click",
                            "user_id": user,
                            "item_id": item["item_id"],
                            "recommendation_id": answer["recommendation_id"],
                            "timestamp": _now(),
                        }
                    )
            posted = client.post(f"{behavior_url.rstrip('/')}/events", json=events)
            if posted.status_code != 202:
                out.event_errors += 1
                continue
            out.impressions += len(answer["items"])
            out.clicks += len(events) - 1
    return out


def wait_counted(kv: Any, impressions: int, clicks: int, timeout_s: float = 60.0) -> bool:
    """Wait until the consumer counted at least this many impressions and clicks."""
    from zerorec.ctr import read_ctr

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        overall = read_ctr(kv, hours=1).overall
        if overall.impressions >= impressions and overall.clicks >= clicks:
            return True
        time.sleep(0.5)
    return False
