"""simdex.lookup.grouping's bounded thumbnail cache: a long-running web page must not keep every thumbnail it
ever made, and a one-shot lookup decodes each file once."""
from __future__ import annotations

import threading

from simdex.lookup.grouping import BoundedCache, Thumbnails


def test_bounded_cache_evicts_the_least_recently_used():
    made = []
    cache = BoundedCache(2)

    def make(key):
        return lambda: made.append(key) or key.upper()

    assert cache.get("a", make("a")) == "A" and cache.get("b", make("b")) == "B"
    assert cache.get("a", make("a")) == "A"  # a hit: "a" becomes the most recent
    cache.get("c", make("c"))                # evicts "b", the least recent
    assert cache.get("a", make("a")) == "A" and made == ["a", "b", "c"]
    cache.get("b", make("b"))
    assert made == ["a", "b", "c", "b"]


def test_unbounded_cache_gives_every_thread_the_value_of_its_key():
    """Four threads ask for the same 50 missing keys at once: two may both make one (the docstring allows it),
    but every answer is its key's value, a key made once is never made again, and each key is kept once."""
    cache, made, lock = BoundedCache(), [], threading.Lock()
    start = threading.Barrier(4)
    wrong = []

    def make(i):
        def f():
            with lock:
                made.append(i)
            return i * 10
        return f

    def worker():
        start.wait()
        for i in range(50):
            if cache.get(i, make(i)) != i * 10:
                wrong.append(i)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not wrong
    assert sorted(set(made)) == list(range(50)) and len(made) <= 4 * 50
    assert len(cache._items) == 50
    before = len(made)
    assert [cache.get(i, make(-1)) for i in range(50)] == [i * 10 for i in range(50)]
    assert len(made) == before  # every key now a hit


def test_thumbnails_cache_size_bounds_the_decoded_files(tmp_path, monkeypatch):
    th = Thumbnails(tmp_path, cache_size=1)
    calls = []
    monkeypatch.setattr(th, "_make", lambda p, frame: calls.append(p.name) or (None, "x"))
    for name in ("a.png", "a.png", "b.png", "a.png"):
        th.get({"path": name})
    assert calls == ["a.png", "b.png", "a.png"]
