"""The one JSON decoder for outside input (pushsvc.jsondecode): limits and a round-trip property."""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushsvc.jsondecode import MAX_DEPTH, JSONInputError, decodeJSON, tooDeep

values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=30,
)


def depth(value: Any) -> int:
    if isinstance(value, dict):
        value = list(value.values())
    if isinstance(value, list):
        return 1 + max((depth(v) for v in value), default=0)
    return 0


def nested(n: int, inner: Any = 1) -> Any:
    for i in range(n):
        inner = [inner] if i % 2 else {"k": inner}
    return inner


class LimitTests(SynchronousTestCase):
    def refused(self, data: bytes | str, **kw: Any) -> JSONInputError:
        error: JSONInputError = self.assertRaises(JSONInputError, decodeJSON, data, **kw)
        return error

    def test_depth(self) -> None:
        """32 levels decode; 33, and 4,000 (a RecursionError inside json.loads), are refused
        naming the limit, from bytes or text, long or short."""
        self.assertEqual(decodeJSON(json.dumps(nested(MAX_DEPTH))), nested(MAX_DEPTH))
        padded = {"pad": "x" * 5000, "v": nested(MAX_DEPTH - 1)}
        self.assertEqual(decodeJSON(json.dumps(padded).encode()), padded)
        for data in (
            json.dumps(nested(MAX_DEPTH + 1)),
            b"[" * 4000 + b"]" * 4000,
            b"[" * 4000,
            json.dumps({"pad": "x" * 5000, "v": nested(40)}),
            "[" * 500 + "]" * 500,
        ):
            e = self.refused(data)
            self.assertEqual(e.reason, "is nested deeper than 32 levels")
            self.assertFalse(e.tooLarge)
        self.refused("[[[]]]", maxDepth=2)

    def test_bracketsInStrings(self) -> None:
        """Brackets inside strings are not nesting."""
        text = json.dumps({"data": "[" * 5000 + "{" * 100, "k": [']]]\\"[[[']})
        self.assertEqual(decodeJSON(text)["k"], [']]]\\"[[['])

    def test_size(self) -> None:
        """Over maxBytes (UTF-8 bytes, for text too) is refused as too large."""
        self.assertEqual(decodeJSON(b"[1]", maxBytes=3), [1])
        self.assertTrue(self.refused(b"[12]", maxBytes=3).tooLarge)
        self.assertTrue(self.refused('"éé"', maxBytes=5).tooLarge)  # 6 bytes, 4 characters

    def test_malformed(self) -> None:
        """Not UTF-8 and not JSON are refused, each with its reason."""
        self.assertEqual(self.refused(b"\xff").reason, "is not UTF-8")
        for bad in (b"{", b"", b"[1,]", b'"\\x"', b"nul"):
            self.assertEqual(self.refused(bad).reason, "is not valid JSON")


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(values, st.integers(min_value=1, max_value=6))
    def test_depthDecides(self, value: Any, limit: int) -> None:
        """Any JSON value decodes to itself when no deeper than the limit, else is refused."""
        text = json.dumps(value)
        self.assertEqual(tooDeep(value, limit), depth(value) > limit)
        if depth(value) > limit:
            self.assertRaises(JSONInputError, decodeJSON, text, maxDepth=limit)
        else:
            self.assertEqual(decodeJSON(text.encode(), maxDepth=limit), value)
