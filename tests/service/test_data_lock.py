"""One process per data directory and per SQLite file (service/data_lock.py); the refusal of a second real
`simdex serve` process, and the lock's release on kill -9, are in tests/e2e/test_replicas.py."""
from __future__ import annotations

import pytest

from simdex.errors import FailedPrecondition
from simdex.service.facade import Simdex


def test_a_second_service_on_one_sqlite_directory_is_refused_until_the_first_closes(tmp_path):
    first = Simdex(tmp_path / "d", snapshot_interval=0)
    with pytest.raises(FailedPrecondition, match=r"simdex\.db is in use by another simdex process \(pid \d+.*SQLite "
                                                 r"serves one process.*postgresql\+psycopg://"):
        Simdex(tmp_path / "d", snapshot_interval=0)
    first.close()
    Simdex(tmp_path / "d", snapshot_interval=0).close()


def test_one_sqlite_file_is_locked_whatever_the_data_directory(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    first = Simdex(tmp_path / "a", url, snapshot_interval=0)
    try:
        with pytest.raises(FailedPrecondition, match=r"shared\.db is in use"):
            Simdex(tmp_path / "b", url, snapshot_interval=0)
    finally:
        first.close()


def test_servers_on_postgresql_need_a_data_directory_each(tmp_path, pg_url):
    first = Simdex(tmp_path / "d", pg_url, snapshot_interval=0)
    try:
        with pytest.raises(FailedPrecondition, match=r"data directory .* is in use .* each server needs a data "
                                                     r"directory of its own"):
            Simdex(tmp_path / "d", pg_url, snapshot_interval=0)
        Simdex(tmp_path / "other", pg_url, snapshot_interval=0).close()
    finally:
        first.close()


def test_refusals_never_release_the_holders_lock(tmp_path):
    first = Simdex(tmp_path / "d", snapshot_interval=0)
    for _ in range(2):
        with pytest.raises(FailedPrecondition):
            Simdex(tmp_path / "d", snapshot_interval=0)
    first.close()
