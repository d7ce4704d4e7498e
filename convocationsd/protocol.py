"""JSON-RPC 2.0 over newline-delimited UTF-8 JSON: parsing, parameter checks, and encoding. Pure."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

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


@dataclass(frozen=True)
class Request:
    id: Any  # None for a notification
    method: str
    params: dict[str, Any]


class ProtocolError(Exception):
    def __init__(self, code: int, message: str, id: Any = None) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.id = id


def _valid_id(value: Any) -> bool:
    return value is None or (isinstance(value, (str, int, float)) and not isinstance(value, bool))


def parse_request(line: bytes) -> Request:
    """Parses one line into a checked Request, or raises ProtocolError naming the problem."""
    try:
        msg = json.loads(line.decode("utf-8"), parse_constant=_reject_constant)
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
    return _encode({"jsonrpc": "2.0", "id": id_, "result": result}) + b"\n"


def error_line(id_: Any, code: int, message: str, data: Any = None) -> bytes:
    error: dict[str, Any] = {"code": code, "message": message}
    if data is not None:
        error["data"] = data
    return _encode({"jsonrpc": "2.0", "id": id_, "error": error}) + b"\n"


def event_line(seq: int, name: str, data: dict) -> bytes:
    return _encode({"jsonrpc": "2.0", "method": "event", "params": {"event": name, "seq": seq, "data": data}}) + b"\n"


def request_line(id_: Any, method: str, params: dict | None = None) -> bytes:
    msg: dict[str, Any] = {"jsonrpc": "2.0", "id": id_, "method": method}
    if params:
        msg["params"] = params
    return _encode(msg) + b"\n"
