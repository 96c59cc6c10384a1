"""Request ids: every ragloom.v1 request may carry a client-chosen id (see errors.proto).

The id in use names the call in the server's log lines, goes back in the `x-request-id` response
header and in every error's google.rpc.RequestInfo, and (Generate, Ask) is what Abort takes.
"""

from __future__ import annotations

import contextvars
import re
import uuid

from ragloom.errors import InvalidArgument

HEADER = "x-request-id"
# the id of the call this task (or a worker thread it started: asyncio.to_thread copies the
# context) works for; set by status.abort_on_failure, read by the JSON log lines (services/logs.py)
CURRENT: contextvars.ContextVar[str] = contextvars.ContextVar("ragloom_request_id", default="")
_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


def request_id(given: str) -> str:
    """The id in use: the client's (InvalidArgument on request_id when malformed), or a new UUID."""
    if not given:
        return uuid.uuid4().hex
    if not _ID.match(given):
        shown = given if len(given) <= 40 else given[:37] + "..."
        raise InvalidArgument(
            f"request_id {shown!r} must be 1-128 characters of letters, digits and . _ : -", field="request_id"
        )
    return given
