"""Running fuzz scripts against a relay: each script on a connection of its own, every answer
checked against the case's promise, with a bounded window of frames in flight; and the
subscribe storms."""

from __future__ import annotations

import asyncio
import json
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from tests.chaos.fuzz_cases import MAX_ERRORS, MAX_SUBS, WINDOW, Case, Script, error, to_json
from tests.support.tokens import token

__all__ = ["Outcome", "run_script", "subscribe_storm"]


@dataclass
class Outcome:
    frames: int = 0
    matched: int = 0
    mismatches: list[str] = field(default_factory=list)
    categories: Counter[str] = field(default_factory=Counter)
    closes: Counter[str] = field(default_factory=Counter)


def _matches(expected: dict[str, Any], frame: dict[str, Any]) -> bool:
    if frame.get("type") != expected["type"]:
        return False
    if expected["type"] == "error":
        return bool(frame.get("code") == expected["code"] and frame.get("id") == expected["id"])
    return all(frame.get(key) == value for key, value in expected.items())


async def _send(ws: ClientConnection, case: Case) -> None:
    if isinstance(case.payload, bytes):
        await ws.send(case.payload, text=case.as_text)
    else:
        await ws.send(case.payload)


async def run_script(url: str, script: Script, outcome: Outcome) -> None:
    headers = {"Authorization": f"Bearer {token('fuzzer')}"} if script.authed else None
    async with connect(url, additional_headers=headers, max_size=None, compression=None,
                       proxy=None, open_timeout=20, close_timeout=5) as ws:  # fmt: skip
        if script.authed:
            ready = json.loads(await asyncio.wait_for(ws.recv(), 20))
            assert "ready" == ready["type"], ready
        pending: deque[tuple[Case, dict[str, Any]]] = deque()
        cases = deque(script.cases)

        async def receive_one() -> None:
            case, expected = pending.popleft()
            frame = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if _matches(expected, frame):
                outcome.matched += 1
            else:
                outcome.mismatches.append(
                    f"{case.category}: {str(case.payload)[:120]!r} -> {frame} (expected {expected})"
                )

        while cases:
            case = cases.popleft()
            if case.close is not None:
                while pending:  # answers to earlier frames first, then the frame that closes
                    await receive_one()
            outcome.frames += 1
            outcome.categories[case.category] += 1
            if case.close is None:
                await _send(ws, case)
            else:
                code, reason = case.close
                try:
                    await _send(ws, case)  # the relay may close before it has read all of it
                    frame = await asyncio.wait_for(ws.recv(), 30)
                    outcome.mismatches.append(
                        f"{case.category}: a frame {frame[:80]!r} instead of close {code}"
                    )
                except ConnectionClosed as closed:
                    got = closed.rcvd.code if closed.rcvd else 1006
                    got_reason = closed.rcvd.reason if closed.rcvd else ""
                    outcome.closes[str(got)] += 1
                    if got == code and (reason is None or reason == got_reason):
                        outcome.matched += 1
                    else:
                        outcome.mismatches.append(
                            f"{case.category}: closed {got} {got_reason!r}, expected {code} {reason!r}"
                        )
                return
            pending.extend((case, answer) for answer in case.answers)
            while len(pending) > WINDOW:
                await receive_one()
        while pending:
            await receive_one()


async def subscribe_storm(
    url: str, count: int, outcome: Outcome, *, unsubscribe_each: bool
) -> None:
    """`count` subscribe messages on one connection: with an unsubscribe after each (all answered),
    or without (100 subscribed, 100 too_many_subscriptions, then close 1008)."""
    headers = {"Authorization": f"Bearer {token('fuzzer')}"}
    category = "10,000 subscribes" if count >= 10_000 else f"{count:,} subscribes"
    async with connect(url, additional_headers=headers, max_size=None, compression=None,
                       proxy=None, open_timeout=20, close_timeout=5) as ws:  # fmt: skip
        assert "ready" == json.loads(await ws.recv())["type"]
        expected: deque[dict[str, Any]] = deque()
        closed_with: tuple[int, str] | None = None

        async def reader() -> None:
            nonlocal closed_with
            try:
                async for raw in ws:
                    frame = json.loads(raw)
                    want = expected.popleft() if expected else {"type": "nothing more"}
                    if _matches(want, frame):
                        outcome.matched += 1
                    else:
                        outcome.mismatches.append(f"{category}: {frame} (expected {want})")
            except ConnectionClosed as exc:
                closed_with = (exc.rcvd.code, exc.rcvd.reason) if exc.rcvd else (1006, "")
            else:
                closed_with = (ws.close_code or 1006, ws.close_reason or "")
            outcome.closes[str(closed_with[0])] += 1

        task = asyncio.create_task(reader())
        try:
            for n in range(count):
                sub_id = f"storm{n}"
                if unsubscribe_each:
                    expected.append({"type": "subscribed", "id": sub_id})
                    expected.append({"type": "unsubscribed", "id": sub_id})
                elif n < MAX_SUBS:
                    expected.append({"type": "subscribed", "id": sub_id})
                elif n < MAX_SUBS + MAX_ERRORS:
                    expected.append(error("too_many_subscriptions", sub_id))
                await ws.send(to_json({"type": "subscribe", "id": sub_id, "table": "generations"}))
                outcome.frames += 1
                outcome.categories[category] += 1
                if unsubscribe_each:
                    await ws.send(to_json({"type": "unsubscribe", "id": sub_id}))
                    outcome.frames += 1
                    outcome.categories[category] += 1
                while len(expected) > WINDOW:
                    await asyncio.sleep(0.001)
                    if task.done():
                        break
                if task.done():
                    break
        except ConnectionClosed:
            pass
        if unsubscribe_each:
            while expected and not task.done():  # noqa: ASYNC110 - the reader empties it
                await asyncio.sleep(0.01)
            await ws.close()
        await asyncio.wait_for(task, 60)
        if unsubscribe_each:
            ok = not expected and closed_with == (1000, "")
        else:
            ok = not expected and closed_with == (1008, "too_many_errors")
        if ok:
            outcome.matched += 1
        else:
            outcome.mismatches.append(
                f"{category}: closed {closed_with}, {len(expected)} answers missing"
            )
