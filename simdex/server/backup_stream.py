"""The Backup RPC's answer: the service writes a backup's files (service.backup.fill: not synced, they only pass
through) into a temporary folder of the data directory, they go out in pieces under the message limit, the
manifest last, and the folder is removed when the stream ends, however it ends."""
from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Iterator

from simdex.proto import simdex_pb2 as pb
from simdex.service import backup
from simdex.service.facade import Simdex

PIECE_BYTES = 1 << 20  # file bytes per message at most (fewer under a smaller message limit)


def backup_chunks(service: Simdex, max_message_bytes: int) -> Iterator[pb.BackupChunk]:
    """Take the backup now (its errors are the call's), and return the stream that sends it."""
    tmp = Path(tempfile.mkdtemp(prefix=".backup-", dir=service.data_dir))
    try:
        manifest = backup.fill(tmp, service.engine, service.collections.snapshot_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return _send(tmp, [*manifest["files"], backup.MANIFEST], min(PIECE_BYTES, max_message_bytes // 2))


def _send(tmp: Path, names: list[str], size: int) -> Iterator[pb.BackupChunk]:
    try:
        for name in names:
            with open(tmp / name, "rb") as fh:
                data = fh.read(size)
                yield pb.BackupChunk(path=name, data=data)
                while data := fh.read(size):
                    yield pb.BackupChunk(path=name, data=data)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
