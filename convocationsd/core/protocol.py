"""JSON-RPC 2.0 over newline-delimited UTF-8 JSON: parsing (single requests and batches), parameter checks,
and encoding. Pure."""

from __future__ import annotations

import json
import math
from collections import namedtuple

TYPE_CHECKING = False  # not from typing: importing typing is ~10 % of `convctl status` (bench/ANALYSIS.md)
if TYPE_CHECKING:  # typing is not imported at run time: convctl imports this module (request_line)
    from typing import Any, NamedTuple

VERSION = 1  # reported by `status`; raised only for a change an existing client could trip over
MAX_LINE = 1024 * 1024  # bytes; a longer line closes the connection
MAX_BATCH = 100  # requests in one batch: one line in may not become an unbounded line out
BOM = b"\xef\xbb\xbf"  # not JSON (RFC 8259 8.1: JSON sent over a network has none), so a parse error

PARSE_ERROR = -32700
INVALID_REQUEST = -32600
METHOD_NOT_FOUND = -32601
INVALID_PARAMS = -32602
INTERNAL_ERROR = -32603
OPERATION_FAILED = -32000  # an expected failure (error.data carries "hint")

# method -> {param: (accepted types, required)}
METHODS: dict[str, dict[str, tuple[tuple[type, ...], bool]]] = {
    "status": {},
    "oauth.start": {"restart": ((bool,), False), "paste": ((bool,), False)},
    "oauth.cancel": {"session_id": ((str,), False)},
    "oauth.exchange": {"code": ((str,), True), "session_id": ((str,), False)},
    "subscribe": {"events": ((list,), False)},
    "secret.status": {},
    "secret.set": {"key": ((str,), True), "verify": ((bool,), False)},
    "secret.clear": {},
    "secret.get": {},
    "secret.retry_store": {},
    "debug.modules": {},
}

# allow_nan=False: NaN and Infinity are not JSON, and a reply that holds one is refused rather than sent.
_utf8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode
_ascii = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode


def _encode(obj: Any) -> bytes:
    try:
        return _utf8(obj).encode()
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: send it escaped
        return _ascii(obj).encode()


class _NotFinite(ValueError):
    pass


def _reject_constant(name: str) -> Any:
    raise _NotFinite(f"{name} is not JSON")


def _finite_float(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):  # 1e999: beyond the range of a double, Python would make it inf
        raise _NotFinite(f"{text[:32]} is not a finite number")
    return value


# One decoder for every line: ``json.loads(..., parse_constant=...)`` would build a new decoder and scanner
# for each request, which costs about as much as the parse itself.
_decoder = json.JSONDecoder(parse_constant=_reject_constant, parse_float=_finite_float)
_decode = _decoder.decode
_scan_once = _decoder.scan_once  # type: ignore[attr-defined]  # set by JSONDecoder.__init__, not in typeshed
_JSON_SPACE = " \t\n\r"


def _loads(text: str) -> Any:
    """``_decode(text)`` without its two regex passes when the line starts with a value (the usual case)."""
    if not text or text[0] in _JSON_SPACE:
        return _decode(text)
    try:
        value, end = _scan_once(text, 0)
    except StopIteration:
        raise ValueError("Expecting value") from None
    if end != len(text) and text[end:].strip(_JSON_SPACE):
        raise ValueError("Extra data")
    return value


class Encoded(dict):  # type: ignore[type-arg]  # a base class is evaluated at run time, where Any is not imported
    """A result dict that also carries its own JSON text, so ``result_line`` need not encode it again
    (``Controller.status`` caches its answer this way). Changing the dict drops the text.

    ``Encoded(data)`` has no text; set ``.json`` after building it."""

    json: bytes | None = None

    def __setitem__(self, key: Any, value: Any) -> None:
        self.json = None
        super().__setitem__(key, value)

    def __delitem__(self, key: Any) -> None:
        self.json = None
        super().__delitem__(key)

    def __ior__(self, other: Any) -> Encoded:  # type: ignore[misc]  # dict's |= keeps the type
        self.json = None
        return super().__ior__(other)

    def update(self, *args: Any, **kw: Any) -> None:
        self.json = None
        super().update(*args, **kw)

    def pop(self, *args: Any) -> Any:
        self.json = None
        return super().pop(*args)

    def popitem(self) -> Any:
        self.json = None
        return super().popitem()

    def setdefault(self, *args: Any) -> Any:
        self.json = None
        return super().setdefault(*args)

    def clear(self) -> None:
        self.json = None
        super().clear()


def encode(obj: Any) -> bytes:
    """Compact UTF-8 JSON, as every line on the socket is written."""
    return _encode(obj)


class _NoId:
    __slots__ = ()

    def __repr__(self) -> str:
        return "NO_ID"


NO_ID: Any = _NoId()  # the id of a notification: a request without an "id" member (``"id": null`` is answered)

if TYPE_CHECKING:

    class Request(NamedTuple):  # immutable like a frozen dataclass, and a third of the cost to build
        id: Any  # NO_ID for a notification
        method: str
        params: dict[str, Any]

else:  # the same tuple class, built without importing typing
    Request = namedtuple("Request", ("id", "method", "params"))

_tuple_new = tuple.__new__


class ProtocolError(Exception):
    """A request that cannot be run. ``id`` is where the error reply goes: NO_ID (a notification) gets none."""

    def __init__(self, code: int, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


def _valid_id(value: Any) -> bool:
    return (
        type(value) is int
        or value is None
        or value is NO_ID
        or (isinstance(value, (str, int, float)) and not isinstance(value, bool))
    )


def parse_line(line: bytes) -> Request | list[Request | ProtocolError]:
    """One line: a Request, or for a batch (a JSON array) one Request or ProtocolError per member, in order.
    Raises ProtocolError for a line that gets one error reply: not JSON, an empty or oversized batch, or a
    single request that is invalid."""
    try:
        msg = _loads(line.decode("utf-8"))
    except _NotFinite:
        raise ProtocolError(
            PARSE_ERROR, "Parse error: NaN, Infinity and numbers beyond the range of a double are not JSON"
        ) from None
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        if line.startswith(BOM):
            raise ProtocolError(
                PARSE_ERROR, "Parse error: the line starts with a byte order mark (U+FEFF); send UTF-8 without one"
            ) from None
        raise ProtocolError(
            PARSE_ERROR, "Parse error: each line must be one UTF-8 JSON request object or batch array"
        ) from None
    if type(msg) is not list:
        return check_request(msg)
    if not msg:
        raise ProtocolError(INVALID_REQUEST, "Invalid request: a batch must hold at least one request")
    if len(msg) > MAX_BATCH:
        raise ProtocolError(INVALID_REQUEST, f"Invalid request: a batch may hold at most {MAX_BATCH} requests")
    members: list[Request | ProtocolError] = []
    for item in msg:
        try:
            members.append(check_request(item))
        except ProtocolError as e:
            members.append(e)
    return members


def check_request(msg: Any) -> Request:
    """A decoded JSON value as a checked Request, or raises ProtocolError naming the problem.

    A value that is not a valid request object (``jsonrpc``, ``method``, ``params`` or ``id`` of the wrong
    shape) is answered -32600 even without an id, since it is not a notification either (that needs a valid
    request); the error echoes the id when the id itself is usable, else carries null. An unknown method or
    bad params of a notification are not answered. Written for the common case, a valid request without
    params: every check below is one comparison when it passes."""
    if not isinstance(msg, dict):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: expected a JSON object")
    id_ = msg.get("id", NO_ID)
    if type(id_) is not int and not _valid_id(id_):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: id must be a string, a number or null")
    if msg.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"', _reply_to(id_))
    method = msg.get("method")
    if not isinstance(method, str):
        raise ProtocolError(INVALID_REQUEST, 'Invalid request: "method" must be a string', _reply_to(id_))
    params = msg.get("params")
    if params is not None and type(params) is not dict and type(params) is not list:
        raise ProtocolError(
            INVALID_REQUEST, "Invalid request: params must be an object (or an array, or left out)", _reply_to(id_)
        )
    spec = METHODS.get(method)
    if spec is None:
        raise ProtocolError(METHOD_NOT_FOUND, f"Method not found: {method[:64]!r}", id_)
    if not params:  # absent, null, {} or [] (no positional params at all): none given
        params = {}
    elif isinstance(params, list):
        raise ProtocolError(INVALID_PARAMS, _positional_message(method, spec), id_)
    else:
        if None in params.values():  # an optional param given as null is one left out
            params = {name: value for name, value in params.items() if value is not None}
        _check_params(method, spec, params, id_)
    if spec:
        for name, (_, required) in spec.items():
            if required and name not in params:
                raise ProtocolError(INVALID_PARAMS, f"Invalid params: {method} needs {name!r}", id_)
    # tuple.__new__ rather than Request(...): the namedtuple's own __new__ is a Python function, which
    # doubled the cost of building it (bench/ANALYSIS.md).
    return _tuple_new(Request, (id_, method, params))


def _reply_to(id_: Any) -> Any:
    """Where the error of an invalid request goes: its id when it has a usable one, else null."""
    return None if id_ is NO_ID else id_


def _check_params(
    method: str, spec: dict[str, tuple[tuple[type, ...], bool]], params: dict[str, Any], id_: Any
) -> None:
    for name, value in params.items():
        if name not in spec:
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {method} takes no {name[:64]!r}", id_)
        types, _ = spec[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            kind = " or ".join(t.__name__ for t in types)
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {name!r} must be a {kind}", id_)
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {name!r} must be a list of strings", id_)


def _positional_message(method: str, spec: dict[str, tuple[tuple[type, ...], bool]]) -> str:
    if not spec:
        return f"Invalid params: {method} takes no params"
    names = ", ".join(f'"{name}"' for name in spec)
    return (
        f"Invalid params: {method} takes named params ({names}): send params as an object; "
        "positional params (an array) are not accepted"
    )


def result_line(id_: Any, result: Any) -> bytes:
    text = result.json if type(result) is Encoded else None
    if text is None:
        return _encode({"jsonrpc": "2.0", "id": id_, "result": result}) + b"\n"
    # Byte for byte what the line above would give: the same separators, the same key order.
    return b"".join(
        (b'{"jsonrpc":"2.0","id":', b"%d" % id_ if type(id_) is int else _encode(id_), b',"result":', text, b"}\n")
    )


def error_line(id_: Any, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _encode({"jsonrpc": "2.0", "id": id_, "error": error}) + b"\n"


def batch_line(replies: list[bytes]) -> bytes:
    """The answer to a batch: the members' reply lines as one JSON array on one line."""
    return b"[" + b",".join(reply[:-1] for reply in replies) + b"]\n"


def event_line(seq: int, name: str, data: dict[str, Any]) -> bytes:
    return _encode({"jsonrpc": "2.0", "method": "event", "params": {"event": name, "seq": seq, "data": data}}) + b"\n"


def request_line(id_: Any, method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params:
        msg["params"] = params
    return _encode(msg) + b"\n"
