"""The combiner shared by the server's index batcher and the client's search coalescer."""
import threading
import time

import pytest

from simdex.combining import Combiner


def _hammer(c: Combiner, threads: int, each: int) -> dict:
    out, errors = {}, []

    def caller(j):
        try:
            for i in range(each):
                out[j, i] = c.submit(("key", j % 2), (j, i))
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    ts = [threading.Thread(target=caller, args=(j,)) for j in range(threads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(60)
    assert not errors, errors
    return out


@pytest.mark.parametrize("slots", [1, 2])
def test_answered_callers_do_not_wait_for_a_slot_so_later_requests_keep_stacking(slots):
    """A caller whose request a combiner served returns at once; it does not queue for a slot behind the next
    call. (Before this was so, each answered caller took the slot in turn and every later call held one request:
    400 calls for 400 requests.)"""
    calls = []

    def serve(key, requests):
        calls.append((key, len(requests)))
        time.sleep(0.003)
        return [("answer", key, r) for r in requests]

    out = _hammer(Combiner(serve, slots), threads=8, each=25)
    assert out == {(j, i): ("answer", ("key", j % 2), (j, i)) for j in range(8) for i in range(25)}
    assert sum(n for _, n in calls) == 200
    assert len(calls) <= 140, f"requests were hardly stacked: {len(calls)} calls for 200 requests"


def test_max_batch_bounds_one_call_and_the_rest_are_served_next():
    calls = []
    gate = threading.Event()

    def serve(key, requests):
        calls.append(len(requests))
        gate.wait(10)  # the first call holds the slot until every other caller has queued
        return list(requests)

    c = Combiner(serve, 1, max_batch=3)
    threads = [threading.Thread(target=c.submit, args=("k", i)) for i in range(10)]
    threads[0].start()
    deadline = time.monotonic() + 10
    while not calls and time.monotonic() < deadline:
        time.sleep(0.001)
    for t in threads[1:]:
        t.start()
    while len(c._pending) < 9 and time.monotonic() < deadline:
        time.sleep(0.001)
    gate.set()
    for t in threads:
        t.join(10)
    assert calls[0] == 1 and sum(calls) == 10 and max(calls) == 3, calls


def test_an_error_reaches_every_request_of_that_call_and_no_other():
    def serve(key, requests):
        if key == "bad":
            raise ValueError("bad key")
        return [r * 2 for r in requests]

    c = Combiner(serve, 1)
    with pytest.raises(ValueError, match="bad key"):
        c.submit("bad", 1)
    assert c.submit("good", 21) == 42  # the slot was given back
