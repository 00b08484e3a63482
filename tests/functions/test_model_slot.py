"""zerorec.serving.ModelSlot: atomic swap, refusal keeps the old model, 503 until loaded."""

from __future__ import annotations

import asyncio

import pytest
from zerorec.errors import IntegrityError, NotFoundError
from zerorec.serving import HTTPError, ModelSlot


def test_swap_and_refusal() -> None:
    def loader(version: str) -> tuple[str, str]:
        if version == "bad":
            raise IntegrityError("checksum mismatch")
        if version == "boom":
            raise RuntimeError("does not build")
        return ("v1" if version == "latest" else version), f"model-{version}"

    slot = ModelSlot("m", loader)
    with pytest.raises(HTTPError) as err:
        slot.require()
    assert err.value.status == 503
    assert slot.load() and slot.version == "v1"
    held = slot.require()
    assert slot.load("v2") and slot.version == "v2" and held.value == "model-latest", "old object untouched"
    assert not slot.load("bad") and slot.version == "v2" and "IntegrityError" in (slot.last_error or "")
    assert not slot.load("boom") and slot.version == "v2" and "RuntimeError" in (slot.last_error or "")
    assert slot.load("v3") and slot.last_error is None


def test_missing_model_retries_in_background() -> None:
    calls = []

    def loader(version: str) -> tuple[str, int]:
        calls.append(version)
        if len(calls) < 2:
            raise NotFoundError("no LATEST")
        return "v1", 1

    slot = ModelSlot("m", loader, retry_s=0.01)
    assert not slot.load()

    async def go() -> None:
        for _ in range(200):
            if slot.health().status_code == 200:
                return
            await asyncio.sleep(0.02)

    asyncio.run(go())
    assert slot.version == "v1" and len(calls) == 2


def _drive(slot: ModelSlot, until: str | None = None, rounds: int = 200) -> None:
    """Call refresh_if_due as requests would, until the slot serves `until` (or `rounds` pass)."""

    async def go() -> None:
        for _ in range(rounds):
            slot.refresh_if_due()
            if slot.version == until:
                return
            await asyncio.sleep(0.02)

    asyncio.run(go())


def test_a_loaded_slot_follows_latest_it_was_not_told_about() -> None:
    """Knative delivers model.published to one pod: the others must find the new LATEST themselves."""
    latest = ["v1"]
    store_down = [False]

    def probe() -> str:
        if store_down[0]:
            raise NotFoundError("LATEST unreadable")
        return latest[0]

    def loader(version: str) -> tuple[str, str]:
        got = latest[0] if version == "latest" else version
        return got, f"model-{got}"

    slot = ModelSlot("m", loader, latest=probe, poll_s=0.01)
    assert slot.load() and slot.version == "v1"
    latest[0] = "v2"
    _drive(slot, until="v2")
    assert slot.version == "v2" and slot.require().value == "model-v2"

    store_down[0] = True  # an unreadable LATEST keeps the model that serves
    latest[0] = "v3"
    _drive(slot, rounds=10)
    assert slot.version == "v2"

    plain = ModelSlot("m", loader)  # no `latest`: never polls
    assert plain.load() and plain.version == "v3"
    latest[0] = "v4"
    _drive(plain, rounds=10)
    assert plain.version == "v3"
