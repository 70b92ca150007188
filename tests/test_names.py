"""The one set of name validators (pushsvc.names): examples and a property over control chars."""

from __future__ import annotations

from collections.abc import Callable

from hypothesis import given, settings
from hypothesis import strategies as st
from twisted.trial.unittest import SynchronousTestCase

from pushsvc import names

CHANNEL_CHARS = "-abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_=@,.;"

VALIDATORS: dict[str, Callable[[object], bool]] = {
    "channel": names.isChannel,
    "channel or user channel": lambda v: names.isChannel(v, allowUser=True),
    "user channel": names.isUserChannel,
    "user id": names.isUserId,
    "socket id": names.isSocketId,
    "room": names.isRoom,
    "event name": names.isEventName,
}

# One valid name per validator, to put a control character into.
VALID = {
    "channel": "private-orders",
    "channel or user channel": "#server-to-user-u1",
    "user channel": "#server-to-user-u1",
    "user id": "u1",
    "socket id": "123.456",
    "room": "general",
    "event name": "my-event",
}

controls = st.characters(categories=["Cc", "Cf", "Cs", "Zl", "Zp"])


class ExampleTests(SynchronousTestCase):
    def test_validNamesPass(self) -> None:
        """Each validator takes its example name and the longest allowed ones."""
        for what, value in VALID.items():
            self.assertTrue(VALIDATORS[what](value), what)
        self.assertTrue(names.isChannel("a" * 200))
        self.assertTrue(names.isUserId("u" * 200))
        self.assertTrue(names.isChannel("#server-to-user-" + "u" * 200, allowUser=True))
        self.assertTrue(names.isRoom("r" * 64))
        self.assertTrue(names.isEventName("é" * 200))

    def test_trailingNewlineRefused(self) -> None:
        """A trailing newline (what $ lets through) is refused by every validator."""
        for what, value in VALID.items():
            for tail in ("\n", "\r\n", "\r"):
                self.assertFalse(VALIDATORS[what](value + tail), (what, tail))

    def test_refused(self) -> None:
        """Too long, empty, wrong characters, other digits than 0-9 and non-strings are refused."""
        self.assertFalse(names.isChannel("a" * 201))
        self.assertFalse(names.isChannel(""))
        self.assertFalse(names.isChannel("a b"))
        self.assertFalse(names.isChannel("#server-to-user-u1"))
        self.assertFalse(names.isChannel("#server-to-user-", allowUser=True))
        self.assertFalse(names.isChannel("#server-to-user-a b", allowUser=True))
        self.assertFalse(names.isChannel(None))
        self.assertFalse(names.isUserId("u" * 201))
        self.assertFalse(names.isUserId(42))
        self.assertFalse(names.isSocketId("1.2.3"))
        self.assertFalse(names.isSocketId("\u0661.2"))  # ARABIC-INDIC DIGIT ONE matches \d
        self.assertFalse(names.isSocketId("1." + "2" * 65))
        self.assertFalse(names.isRoom("-general"))
        self.assertFalse(names.isRoom("General"))
        self.assertFalse(names.isRoom("r" * 65))
        self.assertFalse(names.isEventName(""))
        self.assertFalse(names.isEventName("e" * 201))
        for bidi in ("\u202e", "\u200b", "\ufeff", "\u2028", "\x85", "\x7f"):
            self.assertFalse(names.isEventName("a" + bidi), repr(bidi))


class PropertyTests(SynchronousTestCase):
    @settings(max_examples=300, deadline=None)
    @given(
        st.sampled_from(sorted(VALIDATORS)),
        st.integers(min_value=0),
        controls,
        st.text(max_size=20),
    )
    def test_controlCharacterRefusedEverywhere(
        self, what: str, index: int, control: str, noise: str
    ) -> None:
        """Every validator refuses any string holding a control character, wherever it is."""
        for base in (VALID[what], noise):
            index %= len(base) + 1
            value = base[:index] + control + base[index:]
            self.assertFalse(VALIDATORS[what](value), (what, value))

    @settings(max_examples=200, deadline=None)
    @given(st.text(CHANNEL_CHARS, min_size=1, max_size=200))
    def test_channelCharactersPass(self, name: str) -> None:
        """Any 1-200 channel characters are a channel and a user id."""
        self.assertTrue(names.isChannel(name))
        self.assertTrue(names.isUserId(name))
        self.assertTrue(names.isChannel(names.SERVER_TO_USER_PREFIX + name, allowUser=True))
