"""Error reports to Sentry, with patient data removed before anything leaves the process.

Sentry's own scrubbing matches key names ("password", "token"); patient text travels in
values that no key name gives away (a message, a transcript, a pydantic or asyncpg error
that quotes its input). So the scrubber here keeps only what describes *where* an error
happened — exception types, stack frames without their variables, tags, the runtime —
and drops every free-text value: exception messages, log messages and their arguments,
breadcrumb messages and data, request bodies, headers, query strings, users and extras.
"""

from __future__ import annotations

import logging
import warnings
from typing import Any

import sentry_sdk

log = logging.getLogger(__name__)

REDACTED = "[redacted]"
_KEPT_CONTEXTS = ("runtime", "os", "trace")
_KEPT_BREADCRUMB_FIELDS = ("type", "category", "level", "timestamp")


def init_error_reports(dsn: str | None, *, environment: str, release: str) -> bool:
    """Start reporting to Sentry when a DSN is configured; returns whether it did."""
    if not dsn:
        return False
    with warnings.catch_warnings():
        # Recent 2.x releases deprecate send_default_pii in favour of data_collection;
        # it is still honoured, and stating it keeps the promise explicit in this file.
        warnings.filterwarnings("ignore", "The send_default_pii option", DeprecationWarning)
        sentry_sdk.init(
            dsn=dsn,
            environment=environment,
            release=release,
            send_default_pii=False,
            include_local_variables=False,
            max_request_body_size="never",
            before_send=scrub_event,
            before_send_transaction=scrub_event,
            before_breadcrumb=scrub_breadcrumb,
        )
    log.info("error reports enabled")
    return True


def scrub_event(event: Any, hint: Any = None) -> Any:
    for key in ("user", "extra", "server_name", "modules"):
        event.pop(key, None)
    request = event.get("request")
    if isinstance(request, dict):
        event["request"] = {"method": request.get("method")}
    if isinstance(event.get("message"), str):
        event["message"] = REDACTED
    logentry = event.get("logentry")
    if isinstance(logentry, dict):
        event["logentry"] = {"message": REDACTED}
    contexts = event.get("contexts")
    if isinstance(contexts, dict):
        event["contexts"] = {k: v for k, v in contexts.items() if k in _KEPT_CONTEXTS}
    for exception in _values(event.get("exception")):
        if "value" in exception:
            exception["value"] = REDACTED
        _scrub_frames(exception.get("stacktrace"))
    for thread in _values(event.get("threads")):
        _scrub_frames(thread.get("stacktrace"))
    breadcrumbs = event.get("breadcrumbs")
    if isinstance(breadcrumbs, dict):
        breadcrumbs["values"] = [scrub_breadcrumb(b) for b in _values(breadcrumbs)]
    for span in event.get("spans") or ():
        if isinstance(span, dict):
            span.pop("data", None)
    return event


def scrub_breadcrumb(crumb: Any, hint: Any = None) -> Any:
    return {k: crumb[k] for k in _KEPT_BREADCRUMB_FIELDS if k in crumb}


def _values(container: Any) -> list[dict[str, Any]]:
    if isinstance(container, dict):
        container = container.get("values")
    return [v for v in container or () if isinstance(v, dict)]


def _scrub_frames(stacktrace: Any) -> None:
    if isinstance(stacktrace, dict):
        for frame in stacktrace.get("frames") or ():
            if isinstance(frame, dict):
                frame.pop("vars", None)
