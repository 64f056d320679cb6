"""FHIR export's Prometheus metrics (counts and latencies, never data)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

FHIR_QUEUE_DEPTH = Gauge(
    "fhir_export_queue_depth", "Resources (pain reports, summaries) waiting to be sent to FHIR"
)
FHIR_SENT = Counter(
    "fhir_export_resources_total", "Resources sent to the FHIR server, by op", ["op"]
)
FHIR_FAILURES = Counter(
    "fhir_export_failures_total", "Bundles the FHIR server did not take (sent again later)"
)
FHIR_SECONDS = Histogram(
    "fhir_export_seconds",
    "Time for the FHIR server to answer one transaction Bundle",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
FHIR_READS = Counter("fhir_bundles_served_total", "FHIR Bundles served, by who asked", ["role"])
