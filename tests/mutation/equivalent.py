"""Mutants that no test can tell from the original, each with why. Keys are as tests/mutation/mutants.py names
them: file:function:operator:before -> after (and #n for the n-th same change in one function).

A mutant belongs here only when no input a caller can give makes it behave differently; "no test checks it"
is a missing test instead. Three kinds recur: a statement whose removal changes nothing (a last ``return
None``), a value the code around it makes irrelevant, and a speed trick whose slow path gives the same answer.
"""

from __future__ import annotations

_ANNOTATION_ONLY = (
    "Only annotations name it, and with `from __future__ import annotations` they are strings that nothing "
    "evaluates at run time."
)
_LAST_RETURN_NONE = "Without it the function ends there all the same, and returns None."
_EVERY_OPEN_FLOW_IS_PENDING = (
    "A flow that has not ended is always the pending one: `pending` is replaced only in `start`, after `_end` "
    "has ended the flow it held, and cleared only by `_end`."
)
_SAME_PATH = (
    "pathlib drops '' and '.' when joining, so looking such a name up finds the entry already reached again "
    "(same key in the walk's dict, same current): skipping it only spares an lstat."
)
_KERNEL_IGNORES = "Tried on Linux 6.18 with a hand-made request: the answer was the same with either value."

EQUIVALENT: dict[str, str] = {
    # core/
    "core/events.py:Listener:statement:Listener = Callable[[str, dict[str, Any]], None] -> pass": _ANNOTATION_ONLY,
    "core/flows.py:AuthUrlBuilder:statement:AuthUrlBuilder = Callable[[str, str, bool], str] -> pass": _ANNOTATION_ONLY,
    "core/pkce.py:TokenSource:statement:TokenSource = Callable[[int], str] -> pass": _ANNOTATION_ONLY,
    "core/flows.py:FlowStore.expire_due:statement:return None -> pass": _LAST_RETURN_NONE,
    "core/flows.py:FlowStore._end:condition:self.pending is flow -> True": _EVERY_OPEN_FLOW_IS_PENDING,
    "core/flows.py:FlowStore.release:boolean:self.pending is flow and flow.status == FlowStatus.EXCHAN... -> "
    "self.pending is flow or flow.status == FlowStatus.EXCHANGING": _EVERY_OPEN_FLOW_IS_PENDING
    + " So a flow that is exchanging is the pending one, and setting a pending flow's status to pending changes "
    "nothing.",
    'core/pkce.py:VERIFIER_CHARS:constant:"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123... -> '
    "'XXABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz01...": "It is a frozenset of the string's "
    "characters, and X is one of them already.",
    "core/pkce.py:s256_challenge:constant:b\"=\" -> b'XX=XX'": "rstrip would also strip a trailing X, but the "
    "last character of a SHA-256 digest in unpadded base64 carries its last 4 bits (two zero bits follow), so "
    "it is one of AEIMQUYcgkosw048, never X.",
    "core/protocol.py:_ascii:constant:False -> True": "`_ascii` encodes only after `_utf8` failed on a lone "
    "surrogate; a NaN or Infinity anywhere makes `_utf8` raise ValueError first, so `_ascii` never sees one.",
    "core/protocol.py:_finite_float:constant:32 -> 33": "The text of `_NotFinite` is never shown: `parse_line` "
    "answers it with its own message.",
    "core/protocol.py:_loads:condition:not text or text[0] in _JSON_SPACE -> True": "A speed trick: `_decode` "
    "(the decoder's own path) gives the same value or ValueError for every line; the shortcut only skips its "
    "two regular-expression passes.",
    "core/protocol.py:_NoId:statement:__slots__ = () -> pass": "There is one instance, NO_ID; without __slots__ "
    "it gets an empty __dict__ that nothing uses.",
    "core/protocol.py:Request:constant:\"Request\" -> 'XXRequestXX'": "The name shows only in repr(), and "
    "nothing prints or logs a Request; equality, fields and tuple behaviour are the same.",
    "core/protocol.py:check_request:condition:None in params.values() -> True": "A speed trick: the dict "
    "comprehension copies params without its None values, which is params itself when it has none.",
    "core/protocol.py:result_line:condition:type(id_) is int -> False": "A speed trick: json gives an int the "
    "same digits as str().",
    "core/protocol.py:check_request:condition:spec -> True": "A speed trick: the loop over the required "
    "parameters does nothing for a method that has none; the check only skips it.",
    # common/
    "common/peercred.py:peer_uid:statement:return None -> pass": "After the except clause the function reaches "
    "its last statement, `return None`, all the same.",
    "common/peercred.py:peer_uid:statement:return None -> pass #2": _LAST_RETURN_NONE,
    "common/paths.py:config_dir:constant:True -> False": "platformdirs reads `roaming` only on Windows, where "
    "convocationsd does not run (Unix sockets, SO_PEERCRED).",
    "common/paths.py:configured_socket:condition:not isinstance(value, str) -> True": "A speed trick: for a "
    "string (never empty here) `convert` raises nothing and its value is not used, so the check only spares "
    "convctl the import of common/settings.py.",
    "common/paths.py:_lstat:statement:return None -> pass": _LAST_RETURN_NONE,
    "common/proc_net.py:hex_address:constant:16 -> 17": "range(0, 17, 4) adds only the index 16, whose slice of "
    "the 16-byte address is empty.",
    "common/proc_net.py:connection_uid:statement:return None -> pass": "The loop goes on to the other entries, "
    "and none has the same two ends: the kernel lists a connection once (tcp for IPv4, tcp6 for IPv6).",
    "common/proc_net.py:NLMSG_ERROR:constant:2 -> 3": "An error reply is also refused by the state check: the "
    "byte at the state's offset is the second byte of a negative errno, 0xff, never TCP_ESTABLISHED (1). "
    "The kind check stays, as the cheaper and clearer reason.",
    "common/proc_net.py:diag_uid:constant:1 -> 2 #3": "The request's sequence number; the kernel echoes it, and "
    "one request per socket needs none. " + _KERNEL_IGNORES,
    "common/proc_net.py:diag_uid:constant:0 -> 1 #3": "The request header's port id, which the kernel does not "
    "check for a request it answers. " + _KERNEL_IGNORES,
    "common/proc_net.py:diag_uid:statement:nl.settimeout(1.0) -> pass": "The kernel answers a sock_diag lookup "
    "at once; the timeout bounds only a kernel that would never answer, which no test can make.",
    "common/proc_net.py:diag_uid:constant:1.0 -> 2.0": "As for the timeout itself: the kernel answers at once.",
    "common/proc_net.py:diag_uid:constant:0 -> 1 #5": "The multicast groups of the destination; a message to the "
    "kernel (port id 0) reaches it whatever they are. " + _KERNEL_IGNORES,
    "common/proc_net.py:diag_uid:constant:8192 -> 8193": "The receive buffer; the kernel's answer is 124 bytes.",
    "common/proc_net.py:_diag_request:constant:0 -> 1": "Asks for an extension (memory information) as well: "
    "the answer grows after the fields read, which keep their offsets. " + _KERNEL_IGNORES,
    "common/proc_net.py:_diag_request:constant:16 -> 17": "struct's `16s` cuts the padded address back to 16 bytes.",
    "common/proc_net.py:_diag_request:constant:16 -> 17 #2": "struct's `16s` cuts the padded address back to 16 bytes.",
    "common/proc_net.py:_diag_request:constant:0 -> 1 #2": "The interface of the socket looked up; the kernel "
    "found the loopback connection with interface 0, 1 and 2 alike, and the daemon asks only about loopback "
    "connections. " + _KERNEL_IGNORES,
    'common/trust.py:on_the_way:condition:name in ("", ".") -> False': _SAME_PATH,
    "common/trust.py:on_the_way:constant:\"\" -> 'XXXX'": _SAME_PATH,
    "common/trust.py:on_the_way:constant:\".\" -> 'XX.XX'": _SAME_PATH,
    "common/trust.py:make_private_dir:constant:0o700 -> 449": "The umask set just before, 077, clears the "
    "added bit (0o701 is 0o700 plus others' search).",
    # daemon/http_app.py's guards
    "daemon/http_app.py:security:constant:\"\" -> 'XXXX'": "aiohttp's content_type is never empty (it defaults "
    "to application/octet-stream), so the fallback is never used.",
    "daemon/http_app.py:_names_us:constant:\"\" -> 'XXXX'": "A request without Host is refused either way: "
    "neither '' nor 'xxxx' is one of our names.",
}
