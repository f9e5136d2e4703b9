"""Page tokens: opaque to clients, a few non-negative integers (offset, sequence number) to the server."""
from __future__ import annotations

import base64
import json

from simdex.errors import InvalidArgument

MAX_TOKEN = 256


def encode(**fields: int) -> str:
    return base64.urlsafe_b64encode(json.dumps(fields).encode()).decode()


def decode(token: str, *names: str, what: str = "") -> tuple[int, ...]:
    """The named integers of a token this server issued, or InvalidArgument."""
    if len(token) > MAX_TOKEN:  # ours are a few dozen characters; a long one is not ours (and is never parsed)
        raise InvalidArgument(f"page_token is not one this server issued{what}")
    try:
        t = json.loads(base64.urlsafe_b64decode(token.encode()))
        values = tuple(t[n] for n in names)
        if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in values):
            raise ValueError
        return values
    except (ValueError, KeyError, TypeError, RecursionError):
        raise InvalidArgument(f"page_token is not one this server issued{what}") from None
