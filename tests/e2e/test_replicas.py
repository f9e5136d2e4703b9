"""Read replicas on one PostgreSQL database (issue 14): three real `simdex serve` processes on one fresh schema,
each with its own data directory, and a second server on one SQLite directory refused.

Searches on each replica are compared with an exact oracle over what the writer wrote. Lag targets live in
bench/replicas.py; here a replica has to converge within a generous WAIT_S."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from conftest import oracle
from proc import ServerExited
from simdex.clients import Client

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(180)]
DIM = 16
WAIT_S = 15.0


@pytest.fixture
def replicas(procs, tmp_path, pg_url):
    """Start replicas on the test schema: replicas(n) -> n ready servers, each with its own data directory
    (data-a, data-b, ...); call it again for more, while no Client is open (see the test of a late replica)."""
    started = []

    def start(n: int = 1):
        new = [procs.start(tmp_path / f"data-{chr(97 + len(started) + i)}", "--db", pg_url,
                           "--snapshot-interval", "1") for i in range(n)]
        started.extend(new)
        return new

    return start


@pytest.fixture
def clients():
    made: list[Client] = []

    def connect(target) -> Client:
        made.append(Client(target))
        return made[-1]

    yield connect
    for c in made:
        c.close()


def vectors(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, DIM)).astype(np.float32)


def fill(c: Client, n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """Create collection col on `c` and upsert v0..v{n-1} = vectors(n, seed): their names and vectors."""
    c.create_collection("col", DIM)
    x = vectors(n, seed)
    names = [f"v{i}" for i in range(n)]
    c.upsert("col", names, x)
    return names, x


def eventually(check, what: str, timeout: float = WAIT_S):
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as exc:  # noqa: BLE001 - e.g. NotFound before the collection arrives
            last = exc
        time.sleep(0.02)
    raise AssertionError(f"waited {timeout} s for {what} (last error: {last!r})")


def answers_like_oracle(c: Client, live: dict[str, np.ndarray], xq: np.ndarray, k: int = 5) -> bool:
    names = sorted(live)
    _, I = oracle(np.stack([live[n] for n in names]), xq, k)
    return [list(ids) for ids in c.search("col", xq, k).ids] == [[names[i] for i in row] for row in I]


def test_an_upsert_on_a_is_found_on_b_and_c(replicas, clients):
    a, b, c = (clients(p.target) for p in replicas(3))
    names, x = fill(a, 500, 0)
    live = dict(zip(names, x))
    for name, replica in (("b", b), ("c", c)):
        eventually(lambda r=replica: answers_like_oracle(r, live, x[:30]), f"replica {name} to find a's upsert")
        assert replica.count("col") == 500


def test_a_delete_on_c_disappears_from_a_and_b(replicas, clients):
    a, b, c = (clients(p.target) for p in replicas(3))
    names, x = fill(a, 200, 1)
    eventually(lambda: c.count("col") == 200, "replica c to hold a's rows")
    eventually(lambda: answers_like_oracle(c, dict(zip(names, x)), x[:5]), "replica c's index to hold a's rows")
    assert c.delete("col", names[:50]) == 50
    live = dict(zip(names[50:], x[50:]))
    for name, replica in (("a", a), ("b", b)):
        eventually(lambda r=replica: answers_like_oracle(r, live, x[:60]), f"the delete on c to reach {name}")
        assert not {i for ids in replica.search("col", x[:50], 3).ids for i in ids} & set(names[:50])


def test_a_collection_created_on_b_is_listed_on_a_and_its_deletion_too(replicas, clients):
    a, b = (clients(p.target) for p in replicas(2))
    b.create_collection("made-on-b", 8, "cosine")
    eventually(lambda: [i.name for i in a.list_collections()] == ["made-on-b"], "a to list b's collection")
    info = a.get_collection("made-on-b")
    assert (info.dim, info.metric) == (8, "cosine")
    b.delete_collection("made-on-b")
    eventually(lambda: a.list_collections() == [], "a to drop the collection deleted on b")


def test_a_replica_started_after_the_writes_catches_up(replicas, procs, pg_url):
    """A replica started after the writes holds them from its start; killed, and restarted after more writes
    (deletes and replacements), it restores its snapshot and catches up. Servers start here while this process
    has no channel open: grpc's fork handler can hang a fork made while one is."""
    first, = replicas(1)
    with Client(first.target) as a:
        names, x = fill(a, 300, 2)
        a.delete("col", names[:30])
    live = dict(zip(names[30:], x[30:]))
    late, = replicas(1)
    with Client(late.target) as c:
        assert c.count("col") == 270 and answers_like_oracle(c, live, x[:40])  # at its start, before any notice
    eventually(lambda: list((late.data / "indexes").glob("*.npz")), "c's index snapshot")
    late.kill()  # and while it is down, writes its snapshot does not hold
    with Client(first.target) as a:
        a.upsert("col", names[:10], x[:10] + 2)
        a.delete("col", names[100:120])
    live.update(zip(names[:10], x[:10] + 2))
    for n in names[100:120]:
        del live[n]
    again = procs.start(late.data, "--db", pg_url)  # restores its snapshot, then catches up
    with Client(again.target) as c:
        assert answers_like_oracle(c, live, np.concatenate([x[:40], x[100:120]]))
        assert c.count("col") == len(live)


def test_replicas_never_return_an_id_deleted_at_or_before_the_state_they_report(replicas, clients):
    """A writer on a deletes while readers on b and c search. Each reader reads its replica's sequence number s
    before a search: every id the search returns must not have been deleted at a sequence number <= s (the
    replica shows at least state s). When the writer stops, every deleted id is gone everywhere within WAIT_S."""
    procs = replicas(3)
    a = clients(procs[0].target)
    names, x = fill(a, 600, 3)
    readers = [clients(p.target) for p in procs[1:]]
    for r in readers:
        eventually(lambda r=r: r.count("col") == 600, "the readers to hold every row")
    deleted_at: dict[str, int] = {}
    seen: list[tuple[int, set[str]]] = []
    stop = threading.Event()
    errors: list[BaseException] = []

    def read(r: Client, seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not stop.is_set():
            try:
                s = r.get_collection("col").seq
                q = rng.choice(600, size=8, replace=False)
                found = {i for ids in r.search("col", x[q], 3).ids for i in ids}
                seen.append((s, found))
            except BaseException as exc:  # noqa: BLE001 - the test fails on any
                errors.append(exc)
                return

    threads = [threading.Thread(target=read, args=(r, i)) for i, r in enumerate(readers * 2)]
    for t in threads:
        t.start()
    try:
        for j in range(0, 300, 10):
            batch = names[j:j + 10]
            a.delete("col", batch)
            seq = a.get_collection("col").seq  # a is the only writer: its seq right after is this delete's
            deleted_at.update(dict.fromkeys(batch, seq))
            time.sleep(0.02)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert errors == []
    bad = [(s, i, deleted_at[i]) for s, found in seen for i in found if i in deleted_at and deleted_at[i] <= s]
    assert bad == [], f"ids returned at a state after their deletion (state, id, deleted at): {bad[:5]}"
    assert len(seen) > 50
    live = dict(zip(names[300:], x[300:]))
    for r in readers:
        eventually(lambda r=r: answers_like_oracle(r, live, x[:300:7]), "every deleted id to go")


def test_kill_9_of_a_replica_under_search_load_fails_no_search(replicas, clients):
    """Eight clients search through one Client over the three replicas (round_robin, retries on UNAVAILABLE)
    while one replica is killed with SIGKILL: no search fails."""
    procs = replicas(3)
    writer = clients(procs[0].target)
    names, x = fill(writer, 400, 4)
    live = dict(zip(names, x))
    for c in [clients(p.target) for p in procs]:
        eventually(lambda c=c: answers_like_oracle(c, live, x[:5]), "every replica to hold the rows")
    shared = clients([p.target for p in procs])
    _, I = oracle(x, x, 3)
    want = {i: [names[j] for j in I[i]] for i in range(400)}
    done, failures, wrong, answered = threading.Event(), [], [], [0]

    def search(seed: int) -> None:
        rng = np.random.default_rng(seed)
        while not done.is_set():
            i = int(rng.integers(400))
            try:
                got = list(shared.search("col", x[i:i + 1], 3).ids[0])
            except Exception as exc:  # noqa: BLE001 - counted: the test shows them
                failures.append(exc)
                continue
            answered[0] += 1
            if got != want[i]:
                wrong.append((i, got))

    threads = [threading.Thread(target=search, args=(s,)) for s in range(8)]
    for t in threads:
        t.start()
    try:
        time.sleep(1.5)
        before = answered[0]
        assert procs[1].kill() == -9
        time.sleep(3.0)
    finally:
        done.set()
        for t in threads:
            t.join()
    assert failures == [], f"{len(failures)} failed searches, first: {failures[0]!r}"
    assert wrong == []
    assert answered[0] > before > 0  # searches went on after the kill


def test_a_second_server_on_one_sqlite_directory_is_refused_and_kill_9_frees_it(procs, tmp_path):
    data = tmp_path / "data"
    first = procs.start(data)
    with pytest.raises(ServerExited) as refused:
        procs.start(data)
    log = refused.value.proc.log_text()
    assert f"is in use by another simdex process (pid {first.pid}" in log
    assert "SQLite serves one process" in log and "postgresql+psycopg://" in log
    assert first.kill() == -9  # the OS drops the lock with the process
    with Client(procs.start(data).target) as c:
        assert c.list_collections() == []
