"""The states of a login, as ``status`` (``flow.status``) names them. A StrEnum: each member is its string on
the wire. Its own module, importing only ``enum`` (which the interpreter has loaded already), because convctl
reads these states on the path of ``convctl status``, which imports no more than it needs."""

from __future__ import annotations

from enum import StrEnum


class FlowStatus(StrEnum):
    PENDING = "pending"  # waiting for the browser's callback, or for a pasted code
    EXCHANGING = "exchanging"  # a code is being exchanged for a key (nothing may cancel it but shutdown)
    SUCCEEDED = "succeeded"  # the key is stored
    FAILED = "failed"  # ended without a stored key (the flow's error says why)

    @property
    def done(self) -> bool:
        """A final state: the login has ended."""
        return self is FlowStatus.SUCCEEDED or self is FlowStatus.FAILED
