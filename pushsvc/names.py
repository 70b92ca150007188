"""
The names pushsvc takes from outside, checked in one place: channels, user ids, socket ids, chat
rooms and event names. Pure, no I/O; the callers (frames, api, chat, webhook) turn a C{False} into
their own error (a C{pusher:error}, an HTTP 400).

Every pattern is anchored with C{\\A...\\Z} and matched whole: C{^...$} would take a trailing
newline (C{$} matches before one). Digits are C{[0-9]}, not C{\\d}, which takes any Unicode digit.
So no name holds a control character; event names, the only free text here, are checked for
them (C0/C1 controls, format characters such as bidi and zero-width ones, surrogates, line and
paragraph separators).

    channel      1-200 of  a-z A-Z 0-9 - _ = @ , . ;     (what pusher-js and the SDKs allow)
    user channel #server-to-user-{user id}                 (where a signed-in user's events go)
    user id      1-200 of the channel characters            (the SDKs' validate_user_id)
    socket id    digits "." digits, 1-64 digits each        (Pusher's "123.456")
    room         a-z 0-9 then up to 63 of a-z 0-9 -         (chat rooms)
    event name   1-200 characters, no control characters
"""

from __future__ import annotations

import re
import unicodedata

MAX_NAME = 200
SERVER_TO_USER_PREFIX = "#server-to-user-"
CONTROL_CATEGORIES = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})

_channel = re.compile(r"\A[-a-zA-Z0-9_=@,.;]{1,200}\Z")
_socketId = re.compile(r"\A[0-9]{1,64}\.[0-9]{1,64}\Z")
_room = re.compile(r"\A[a-z0-9][a-z0-9-]{0,63}\Z")
_asciiControl = re.compile(r"[\x00-\x1f\x7f]")


def hasControl(text: str) -> bool:
    """Whether C{text} holds a control, format, surrogate or line/paragraph separator character."""
    if text.isascii():  # nearly always: one pass in C
        return _asciiControl.search(text) is not None
    return any(unicodedata.category(c) in CONTROL_CATEGORIES for c in text)


def isUserId(value: object) -> bool:
    return isinstance(value, str) and _channel.match(value) is not None


def isUserChannel(name: object) -> bool:
    """Whether C{name} is C{#server-to-user-} and a valid user id."""
    return (
        isinstance(name, str)
        and name.startswith(SERVER_TO_USER_PREFIX)
        and isUserId(name[len(SERVER_TO_USER_PREFIX) :])
    )


def isChannel(name: object, allowUser: bool = False) -> bool:
    """Whether C{name} is a channel name (a C{#server-to-user-} one too when C{allowUser})."""
    if not isinstance(name, str):
        return False
    if _channel.match(name) is not None:
        return True
    return allowUser and isUserChannel(name)


def isSocketId(value: object) -> bool:
    return isinstance(value, str) and _socketId.match(value) is not None


def isRoom(value: object) -> bool:
    return isinstance(value, str) and _room.match(value) is not None


def isEventName(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_NAME and not hasControl(value)
