"""
The one JSON decoder for everything that comes from outside: HTTP bodies (chat API, C{/notify},
Pusher API) and WebSocket frames with the JSON strings inside them (C{channel_data},
C{user_data}, C{pusher:*} data). Pure, no I/O.

Besides the size limit its callers give it, it refuses JSON nested deeper than L{MAX_DEPTH}
levels. C{json.loads} recurses once per level: "[" * 4000 makes it raise C{RecursionError} after
about a thousand levels (that is caught here: no traceback, nothing else disturbed), and a value
that passes is then walked iteratively, touching only its lists and objects, so a structure too
deep for whatever recursive code handles it next never gets out of here. Scanning the text
instead (brackets outside strings) costs about twice what C{json.loads} does on a 10 KiB
publish; the walk costs a few percent.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 32
_CONTAINERS = (list, dict)
_SHORT = 1024  # characters


class JSONInputError(ValueError):
    """The input is not acceptable JSON; C{reason} completes "the body/frame ...".

    C{tooLarge} tells a size refusal (HTTP 413) from the others (400).
    """

    def __init__(self, reason: str, tooLarge: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.tooLarge = tooLarge


def tooDeep(value: Any, maxDepth: int = MAX_DEPTH) -> bool:
    """Whether the decoded C{value} nests lists and objects deeper than C{maxDepth}."""
    # Level by level, without recursion, looking only at what json.loads built: about a
    # microsecond for an API publish, whose nested part is a string.
    level = [value] if type(value) in _CONTAINERS else []
    for _ in range(maxDepth):
        if not level:
            return False
        level = [
            child
            for container in level
            for child in (container.values() if type(container) is dict else container)
            if type(child) in _CONTAINERS
        ]
    return bool(level)


def _size(data: bytes | str) -> int:
    if isinstance(data, str) and not data.isascii():
        return len(data.encode("utf-8", "surrogatepass"))
    return len(data)


def decodeJSON(data: bytes | str, maxBytes: int | None = None, maxDepth: int = MAX_DEPTH) -> Any:
    """
    The value C{data} (UTF-8 bytes, or text) holds.

    @param maxBytes: the largest C{data} accepted; None when the caller already bounded it.
    @raise JSONInputError: when it is too large, not UTF-8, nested too deeply or not JSON.
    """
    if maxBytes is not None and _size(data) > maxBytes:
        raise JSONInputError(f"is larger than {maxBytes} bytes", tooLarge=True)
    if isinstance(data, str):
        text = data
    else:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise JSONInputError("is not UTF-8") from None
    try:
        value = json.loads(text)
    except ValueError:
        raise JSONInputError("is not valid JSON") from None
    except RecursionError:
        raise JSONInputError(f"is nested deeper than {maxDepth} levels") from None
    # A short text with few brackets cannot be deep: counting them (in C) is cheaper than the
    # walk for a typical WebSocket frame; for a long text the walk is the cheaper of the two.
    if (len(text) > _SHORT or text.count("[") + text.count("{") > maxDepth) and tooDeep(
        value, maxDepth
    ):
        raise JSONInputError(f"is nested deeper than {maxDepth} levels")
    return value
