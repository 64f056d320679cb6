"""Observation's Prometheus metrics: counts by reason, never ids."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

OBSERVATIONS = Gauge("observations_active", "Patients observed by clinician sockets here")
OBSERVE_DENIALS = Counter(
    "observe_denials_total", "Frames refused as forbidden, by reason", ["reason"]
)  # role, other_patient, not_on_team, not_observing
AUDIT_ROWS = Counter("audit_rows_total", "Access audit rows written")
AUDIT_WRITE_FAILURES = Counter("audit_write_failures_total", "Audit batches that failed")
