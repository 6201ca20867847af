"""Schemathesis hooks for tests/fuzz.rs: streaming operations are read for a bounded time.

`GET /v1/events` and `GET /v1/tasks/{id}/logs?follow=true` stay open for as long as the client reads. The fuzzer
reads a whole body before it checks it, so each such request asks the server to end the stream after a few
seconds (`timeoutSeconds`). Generated values the server must refuse (not a number, 0, too big) are left alone, so
that refusing them is still tested; only valid ones above the bound are lowered to it.
"""

import schemathesis

STREAMS = {"/v1/events", "/v1/tasks/{id}/logs"}
BOUND_SECONDS = 2
MAX_STREAM_SECONDS = 86_400


@schemathesis.hook
def before_call(context, case, kwargs):
    if case.operation.path not in STREAMS:
        return
    if not isinstance(case.query, dict):
        case.query = {}
    value = case.query.get("timeoutSeconds")
    if value is None or (type(value) is int and BOUND_SECONDS < value <= MAX_STREAM_SECONDS):
        case.query["timeoutSeconds"] = BOUND_SECONDS
