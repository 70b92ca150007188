"""
Small helpers shared by the JSON resources: replies, errors and bounded request bodies.

Every error reply is C{{"error": "<sentence>"}} with a fitting status, so that a client always
gets something it can show.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any
from urllib.parse import parse_qs

from twisted.internet.defer import Deferred, ensureDeferred
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request

from pushsvc.jsondecode import JSONInputError, decodeJSON

log = Logger()

DEFAULT_MAX_BODY = 64 * 1024


class HTTPError(Exception):
    """Raised by handlers to answer with C{status} and C{{"error": message}}."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers or {}


def jsonBytes(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def writeJSON(request: Request, status: int, obj: Any) -> bytes:
    """Set C{status} and the JSON headers; return the encoded body."""
    request.setResponseCode(status)
    request.setHeader(b"content-type", b"application/json; charset=utf-8")
    request.setHeader(b"cache-control", b"no-store")
    request.setHeader(b"x-content-type-options", b"nosniff")
    return jsonBytes(obj)


def errorBody(request: Request, error: HTTPError) -> bytes:
    for name, value in error.headers.items():
        request.setHeader(name.encode(), value.encode())
    return writeJSON(request, error.status, {"error": error.message})


def readBody(request: Request, limit: int = DEFAULT_MAX_BODY) -> bytes:
    """
    The raw request body, at most C{limit} bytes.

    @raise HTTPError: 413 when the body is larger.
    """
    length = request.getHeader(b"content-length")
    if length is not None:
        try:
            declared = int(length)
        except ValueError:
            raise HTTPError(400, "The Content-Length header is not a number.") from None
        if declared > limit:
            raise HTTPError(413, f"The request body is larger than {limit} bytes.")
    assert request.content is not None
    request.content.seek(0)
    body = request.content.read(limit + 1)
    if len(body) > limit:
        raise HTTPError(413, f"The request body is larger than {limit} bytes.")
    return bytes(body)


def formArgs(request: Request, limit: int = DEFAULT_MAX_BODY) -> dict[bytes, list[bytes]]:
    """
    The query arguments of C{request}, and those of its body when it is sent as
    C{application/x-www-form-urlencoded} (what pusher-js's auth request does); C{request.args}
    is left as it was.

    @raise HTTPError: 413 when the body is larger than C{limit}.
    """
    args = {name: list(values) for name, values in (request.args or {}).items()}
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype == b"application/x-www-form-urlencoded":
        # Decoded here, as UTF-8: parse_qs on bytes fails (a 500) on a %-escaped non-ASCII value.
        try:
            form = parse_qs(
                readBody(request, limit).decode("ascii"), keep_blank_values=True, errors="strict"
            )
        except (UnicodeDecodeError, ValueError):
            raise HTTPError(400, "The form body is not URL-encoded UTF-8.") from None
        # As twisted.web did: a name in the body replaces the same name in the query.
        args.update({k.encode(): [v.encode() for v in vs] for k, vs in form.items()})
    return args


def parseJSONObject(body: bytes, maxBytes: int | None = None) -> dict[str, Any]:
    """
    Decode C{body} as a JSON object, through the one decoder (L{pushsvc.jsondecode}).

    @param maxBytes: the largest body accepted; None when L{readBody} already bounded it.
    @raise HTTPError: 400 when it is not UTF-8 JSON, is nested too deeply or is not an object;
        413 when it is larger than C{maxBytes}.
    """
    try:
        value = decodeJSON(body, maxBytes)
    except JSONInputError as e:
        raise HTTPError(413 if e.tooLarge else 400, f"The request body {e.reason}.") from None
    if not isinstance(value, dict):
        raise HTTPError(400, "The request body must be a JSON object.")
    return value


def requireJSONContentType(request: Request) -> None:
    ctype = (request.getHeader(b"content-type") or b"").split(b";")[0].strip().lower()
    if ctype != b"application/json":
        raise HTTPError(415, "The request body must be sent as application/json.")


def queryArg(
    request: Request, name: str, args: dict[bytes, list[bytes]] | None = None
) -> str | None:
    """The first value of argument C{name} in C{args} (the query's by default), decoded."""
    source = request.args if args is None else args
    values = (source or {}).get(name.encode())
    if not values:
        return None
    try:
        return bytes(values[0]).decode("utf-8")
    except UnicodeDecodeError:
        raise HTTPError(400, f"The parameter {name!r} is not valid UTF-8.") from None


def intArg(request: Request, name: str, default: int, low: int, high: int) -> int:
    raw = queryArg(request, name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise HTTPError(400, f"The parameter {name!r} must be a whole number.") from None
    if not low <= value <= high:
        raise HTTPError(400, f"The parameter {name!r} must be between {low} and {high}.")
    return value


Handler = Callable[[Request], Any]


def respond(request: Request, handler: Handler) -> bytes | int:
    """
    Run C{handler(request)}, which returns C{(status, obj)} or a Deferred/coroutine of it, and
    write the JSON reply. L{HTTPError} becomes its error reply; anything else a logged 500.

    Returns what C{render_*} should return, finishing the request on both paths and ignoring a
    client that hung up meanwhile.
    """
    try:
        result = handler(request)
    except HTTPError as e:
        return errorBody(request, e)
    except Exception:
        log.failure("error handling {method} {uri}", method=request.method, uri=request.uri)
        return writeJSON(request, 500, {"error": "Internal server error."})
    if isinstance(result, tuple):
        status, obj = result
        return writeJSON(request, status, obj)

    finished = [False]

    def gone(_: object) -> None:
        finished[0] = True

    request.notifyFinish().addBoth(gone)
    d: Deferred[Any] = ensureDeferred(result)

    def ok(value: tuple[int, Any]) -> None:
        if finished[0]:
            return
        status, obj = value
        request.write(writeJSON(request, status, obj))
        request.finish()

    def failed(f: Failure) -> None:
        if finished[0]:
            return
        if isinstance(f.value, HTTPError):
            body = errorBody(request, f.value)
        else:
            log.failure("error handling {method} {uri}", f, method=request.method, uri=request.uri)
            body = writeJSON(request, 500, {"error": "Internal server error."})
        request.write(body)
        request.finish()

    d.addCallbacks(ok, failed)
    d.addErrback(lambda f: log.failure("error writing a reply", f))
    return NOT_DONE_YET


class JSONResource(Resource):
    """A leaf whose C{handle_GET} etc. methods are run through L{respond}."""

    isLeaf = True

    def render(self, request: Request) -> bytes | int:
        method = request.method.decode("ascii", "replace")
        handler = getattr(self, "handle_" + method, None)
        if handler is None:
            allowed = sorted(n[len("handle_") :] for n in dir(self) if n.startswith("handle_"))
            request.setHeader(b"allow", ", ".join(allowed).encode())
            return errorBody(request, HTTPError(405, f"Method {method} is not allowed here."))
        return respond(request, handler)
