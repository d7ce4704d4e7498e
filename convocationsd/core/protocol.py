"""JSON-RPC 2.0 over newline-delimited UTF-8 JSON: parsing, parameter checks, and encoding. Pure."""

from __future__ import annotations

import json
from collections import namedtuple

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing is not imported at run time: convctl imports this module (request_line)
    from typing import Any, NamedTuple

MAX_LINE = 1024 * 1024  # bytes; a longer line closes the connection

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
    "secret.set": {"key": ((str,), True)},
    "secret.clear": {},
    "secret.get": {},
    "debug.modules": {},
}

_utf8 = json.JSONEncoder(ensure_ascii=False, separators=(",", ":")).encode
_ascii = json.JSONEncoder(separators=(",", ":")).encode


def _encode(obj: Any) -> bytes:
    try:
        return _utf8(obj).encode()
    except UnicodeEncodeError:  # a lone surrogate from a \ud800 escape: send it escaped
        return _ascii(obj).encode()


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One decoder for every line: ``json.loads(..., parse_constant=...)`` would build a new decoder and scanner
# for each request, which costs about as much as the parse itself.
_decoder = json.JSONDecoder(parse_constant=_reject_constant)
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

    ``Encoded(data)`` has no text; set ``.json`` after building it (no Python ``__init__``: it is on the
    hot path of every ``status``)."""

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


if TYPE_CHECKING:

    class Request(NamedTuple):  # immutable like a frozen dataclass, and a third of the cost to build
        id: Any  # None for a notification
        method: str
        params: dict[str, Any]

else:  # the same tuple class, built without importing typing
    Request = namedtuple("Request", ("id", "method", "params"))


class ProtocolError(Exception):
    def __init__(self, code: int, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


def _valid_id(value: Any) -> bool:
    return type(value) is int or value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def parse_request(line: bytes) -> Request:
    """Parses one line into a checked Request, or raises ProtocolError naming the problem."""
    try:
        msg = _loads(line.decode("utf-8"))
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise ProtocolError(PARSE_ERROR, "Parse error: each line must be one UTF-8 JSON object") from None
    if not isinstance(msg, dict):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: expected a JSON object")
    id_ = msg.get("id")
    if not _valid_id(id_):
        raise ProtocolError(INVALID_REQUEST, "Invalid request: id must be a string, a number or null")
    if msg.get("jsonrpc") != "2.0":
        raise ProtocolError(INVALID_REQUEST, 'Invalid request: "jsonrpc" must be "2.0"', id_)
    method = msg.get("method")
    if not isinstance(method, str):
        raise ProtocolError(INVALID_REQUEST, 'Invalid request: "method" must be a string', id_)
    spec = METHODS.get(method)
    if spec is None:
        raise ProtocolError(METHOD_NOT_FOUND, f"Method not found: {method[:64]!r}", id_)
    params = msg.get("params", {})
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ProtocolError(INVALID_PARAMS, "Invalid params: params must be an object", id_)
    for name, value in params.items():
        if name not in spec:
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {method} takes no {name[:64]!r}", id_)
        types, _ = spec[name]
        if not isinstance(value, types) or (bool not in types and isinstance(value, bool)):
            kind = " or ".join(t.__name__ for t in types)
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {name!r} must be a {kind}", id_)
        if isinstance(value, list) and not all(isinstance(item, str) for item in value):
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {name!r} must be a list of strings", id_)
    for name, (_, required) in spec.items():
        if required and name not in params:
            raise ProtocolError(INVALID_PARAMS, f"Invalid params: {method} needs {name!r}", id_)
    return Request(id_, method, params)


def result_line(id_: Any, result: Any) -> bytes:
    text = result.json if type(result) is Encoded else None
    if text is None:
        return _encode({"jsonrpc": "2.0", "id": id_, "result": result}) + b"\n"
    # Byte for byte what the line above would give: the same separators, the same key order.
    id_text = str(id_).encode() if type(id_) is int else _encode(id_)
    return b'{"jsonrpc":"2.0","id":' + id_text + b',"result":' + text + b"}\n"


def error_line(id_: Any, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _encode({"jsonrpc": "2.0", "id": id_, "error": error}) + b"\n"


def event_line(seq: int, name: str, data: dict[str, Any]) -> bytes:
    return _encode({"jsonrpc": "2.0", "method": "event", "params": {"event": name, "seq": seq, "data": data}}) + b"\n"


def request_line(id_: Any, method: str, params: dict[str, Any] | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params:
        msg["params"] = params
    return _encode(msg) + b"\n"
