"""The pacer: objects are reconciled when due, not on a fixed tick (pure heap + task)."""

from __future__ import annotations

import asyncio
import threading
import time

from mlrollout.operator.pacer import DueTimes, Pacer


def test_due_keys_pop_in_time_order_and_only_once() -> None:
    due = DueTimes()
    due.set("b", 20.0)
    due.set("a", 10.0)
    due.set("c", 30.0)
    assert due.next_at() == 10.0
    assert due.pop_due(9.9) == []
    assert due.pop_due(20.0) == ["a", "b"]
    assert due.pop_due(20.0) == []
    assert due.next_at() == 30.0 and len(due) == 1


def test_setting_a_key_again_replaces_its_time_either_way() -> None:
    due = DueTimes()
    due.set("a", 10.0)
    due.set("a", 50.0)  # later: the earlier entry is stale
    assert due.next_at() == 50.0
    assert due.pop_due(10.0) == []
    due.set("a", 5.0)  # sooner
    assert due.pop_due(5.0) == ["a"]
    assert due.next_at() is None


def test_dropped_keys_never_fall_due() -> None:
    due = DueTimes()
    due.set("a", 1.0)
    due.drop("a")
    assert due.pop_due(100.0) == [] and due.next_at() is None


def test_superseded_entries_do_not_pile_up() -> None:
    due = DueTimes()
    for i in range(10_000):
        due.set("a", float(i))
    assert len(due._heap) < 100
    assert due.pop_due(1e9) == ["a"]


def test_pacer_sleeps_until_due_and_wakes_early_for_a_sooner_one() -> None:
    ran: list[tuple[str, float]] = []
    done = threading.Event()
    start = time.monotonic()

    def call(key: str) -> None:
        ran.append((key, time.monotonic() - start))
        if len(ran) == 2:
            done.set()

    async def main() -> int:
        pacer = Pacer(call, workers=1)
        task = asyncio.create_task(pacer.run())
        await asyncio.sleep(0.05)
        pacer.schedule("late", start + 30.0)
        # Scheduled from another thread while the pacer sleeps towards "late".
        threading.Thread(target=pacer.schedule, args=("soon", start + 0.2)).start()
        await asyncio.sleep(0.6)
        pacer.schedule("late", start + 0.7)  # moved earlier
        await asyncio.get_running_loop().run_in_executor(None, done.wait, 5)
        task.cancel()
        return pacer.runs

    runs = asyncio.run(main())
    assert [k for k, _ in ran] == ["soon", "late"]
    assert 0.2 <= ran[0][1] < 0.6 and 0.7 <= ran[1][1] < 2.0
    assert runs == 2


def test_a_failing_call_does_not_stop_the_pacer() -> None:
    ran: list[str] = []

    def call(key: str) -> None:
        ran.append(key)
        if key == "bad":
            raise RuntimeError("API down")

    async def main() -> None:
        pacer = Pacer(call, workers=1)
        task = asyncio.create_task(pacer.run())
        now = time.monotonic()
        pacer.schedule("bad", now)
        pacer.schedule("good", now + 0.1)
        for _ in range(100):
            if len(ran) == 2:
                break
            await asyncio.sleep(0.02)
        task.cancel()

    asyncio.run(main())
    assert ran == ["bad", "good"]
