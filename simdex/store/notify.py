"""PostgreSQL LISTEN/NOTIFY of commits, for several servers on one database (service/replication.py).

Every write transaction announces itself with pg_notify inside the transaction, so PostgreSQL delivers the notice
only when (and if) it commits. The channel is named after the schema (`simdex:SCHEMA`, cut to PostgreSQL's 63-byte
identifiers on both sides): stores in other schemas of the same database never wake each other. A notice is a hint
only: the listener then reads what changed from the tables by sequence number, so a lost notice costs latency.
On SQLite (one process per file) nothing is announced.
"""
from __future__ import annotations

from contextlib import suppress
from dataclasses import dataclass

from sqlalchemy import Connection, Engine, text

CHANNEL = "left('simdex:' || coalesce(current_schema(), ''), 63)"
EVENTS = ("write", "create", "delete")


@dataclass(frozen=True)
class Commit:
    """One announced commit: `event` (write | create | delete), the collection's id, its sequence number after it."""
    event: str
    cid: int
    seq: int

    @classmethod
    def parse(cls, payload: str) -> "Commit | None":
        """The commit of a payload `EVENT CID SEQ`, or None for anything else (another program on the channel)."""
        parts = payload.split()
        if len(parts) != 3 or parts[0] not in EVENTS or not (parts[1].isdigit() and parts[2].isdigit()):
            return None
        return cls(parts[0], int(parts[1]), int(parts[2]))


def announce(conn: Connection, event: str, cid: int, seq: int) -> None:
    """Queue the notice of this transaction's commit (PostgreSQL only; delivered on commit, dropped on rollback)."""
    if conn.dialect.name == "postgresql":
        conn.execute(text(f"SELECT pg_notify({CHANNEL}, :payload)"), {"payload": f"{event} {cid} {seq}"})


class Listener:
    """A connection of its own (out of the engine's pool, autocommit) that LISTENs to the store's channel.

    Not thread-safe: one thread waits on it. A broken connection (the server restarted, the backend terminated)
    raises the driver's OperationalError from `wait`; the caller closes this one and opens a new Listener."""

    def __init__(self, engine: Engine):
        if engine.dialect.name != "postgresql" or engine.dialect.driver != "psycopg":
            raise ValueError(f"listening to commits needs PostgreSQL through psycopg 3 (postgresql+psycopg://), "
                             f"not {engine.dialect.name}+{engine.dialect.driver}")
        from psycopg import sql  # noqa: PLC0415 - the driver of PostgreSQL URLs only

        self._fairy = engine.raw_connection()
        self._conn = self._fairy.driver_connection
        self._fairy.detach()  # never handed back to the pool: it stays in LISTEN mode until closed
        try:
            self._conn.rollback()  # the pool's pre-ping may have begun a transaction
            self._conn.autocommit = True
            channel = self._conn.execute(f"SELECT {CHANNEL}").fetchone()[0]
            self._conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(channel)))
        except BaseException:
            self.close()
            raise
        self.channel = channel
        self.pid = self._conn.info.backend_pid  # the server process serving it (pg_terminate_backend takes it)

    def wait(self, timeout: float) -> list[Commit]:
        """The commits announced until the first notice arrives or `timeout` seconds pass ([] then), with every
        other one already received: a burst comes back as one list."""
        got = list(self._conn.notifies(timeout=timeout, stop_after=1))
        if got:
            got += self._conn.notifies(timeout=0)
        return [c for n in got if (c := Commit.parse(n.payload))]

    def close(self) -> None:
        with suppress(Exception):  # a dead connection closes with an error; it is closed all the same
            self._fairy.close()
