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


def test_unbounded_cache_makes_each_value_once_across_threads():
    cache, made, lock = BoundedCache(), [], threading.Lock()

    def make(i):
        def f():
            with lock:
                made.append(i)
            return i
        return f

    for i in range(50):
        cache.get(i, make(i))
    threads = [threading.Thread(target=lambda: [cache.get(i, make(-1)) for i in range(50)]) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(made) == list(range(50))


def test_thumbnails_cache_size_bounds_the_decoded_files(tmp_path, monkeypatch):
    th = Thumbnails(tmp_path, cache_size=1)
    calls = []
    monkeypatch.setattr(th, "_make", lambda p, frame: calls.append(p.name) or (None, "x"))
    for name in ("a.png", "a.png", "b.png", "a.png"):
        th.get({"path": name})
    assert calls == ["a.png", "b.png", "a.png"]
