"""FHIR R4 resources for the patient's record. Pure: no I/O.

A pain report is an `Observation` coded LOINC 72514-3 (the 0-10 numeric rating scale),
its value an integer, its time the moment the patient rated it, its body site the region
label, its notes the quality words and the patient's own note. A conversation's summary
is a `DocumentReference` (its id the thread's) with the text as an attachment. The
patient is a `Patient` that carries nothing but the gateway's id for them (an
identifier), so that references resolve on a server that knows nothing else of them.
Resource ids are the gateway's own UUIDs: sending the same report again replaces it,
never duplicates it.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from datetime import datetime
from typing import Any
from uuid import UUID

from storage.pain_reports import PainReport
from storage.summaries import ThreadSummary

FHIR_JSON = "application/fhir+json"
PATIENT_SYSTEM = "urn:painar:patient"  # the identifier system of the gateway's patient ids
PAIN_SEVERITY = {
    "system": "http://loinc.org",
    "code": "72514-3",
    "display": "Pain severity - 0-10 verbal numeric rating [Score] - Reported",
}
SURVEY = {
    "system": "http://terminology.hl7.org/CodeSystem/observation-category",
    "code": "survey",
    "display": "Survey",
}


def patient(patient_id: UUID) -> dict[str, Any]:
    return {
        "resourceType": "Patient",
        "id": str(patient_id),
        "identifier": [{"system": PATIENT_SYSTEM, "value": str(patient_id)}],
    }


def observation(report: PainReport, patient_id: UUID) -> dict[str, Any]:
    resource: dict[str, Any] = {
        "resourceType": "Observation",
        "id": str(report.id),
        "status": "final",
        "category": [{"coding": [SURVEY]}],
        "code": {"coding": [PAIN_SEVERITY], "text": "Pain severity (0-10)"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "effectiveDateTime": _instant(report.recorded_at),
        "valueInteger": report.intensity,
    }
    if report.updated_at is not None:
        resource["meta"] = {"lastUpdated": _instant(report.updated_at)}
    if report.region:
        resource["bodySite"] = {"text": report.region}
    notes = []
    if report.qualities:
        notes.append({"text": "Quality: " + ", ".join(report.qualities)})
    if report.onset_at is not None:
        notes.append({"text": "Began: " + _instant(report.onset_at)})
    if report.note:
        notes.append({"text": report.note})
    if notes:
        resource["note"] = notes
    return resource


def document(summary: ThreadSummary, patient_id: UUID) -> dict[str, Any]:
    """A thread's summary as a DocumentReference (the text as a plain-text attachment)."""
    return {
        "resourceType": "DocumentReference",
        "id": str(summary.thread_id),
        "status": "current",
        "type": {"text": "Conversation summary"},
        "subject": {"reference": f"Patient/{patient_id}"},
        "date": _instant(summary.summarized_at),
        "description": summary.title or "Conversation",
        "content": [
            {
                "attachment": {
                    "contentType": "text/plain; charset=utf-8",
                    "data": base64.b64encode(summary.summary.encode()).decode(),
                    "title": "Summary",
                }
            }
        ],
    }


def collection(
    patient_id: UUID,
    reports: Sequence[PainReport],
    now: datetime,
    summaries: Sequence[ThreadSummary] = (),
) -> dict[str, Any]:
    """A session of the patient (their reports in a time span or a thread, and the
    summaries of its conversations) as a Bundle."""
    resources = [
        patient(patient_id),
        *(observation(r, patient_id) for r in reports),
        *(document(s, patient_id) for s in summaries),
    ]
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "timestamp": _instant(now),
        "entry": [{"fullUrl": _full_url(r), "resource": r} for r in resources],
    }


def transaction(
    reports: Sequence[PainReport],
    summaries: Sequence[tuple[ThreadSummary, UUID]],
    gone: Sequence[tuple[str, UUID]],
    now: datetime,
) -> dict[str, Any]:
    """What a FHIR server applies as one: each patient, live report (`reports`, each with
    its patient_id) and summary (with its patient's id) put by id, each resource that is
    gone deleted by type and id (a resend changes nothing)."""
    patients = {r.patient_id for r in reports if r.patient_id is not None}
    patients |= {patient_id for _, patient_id in summaries}
    entries = [_put(patient(patient_id)) for patient_id in sorted(patients, key=str)]
    for report in reports:
        assert report.patient_id is not None
        entries.append(_put(observation(report, report.patient_id)))
    for summary, patient_id in summaries:
        entries.append(_put(document(summary, patient_id)))
    for resource, resource_id in gone:
        entries.append({"request": {"method": "DELETE", "url": f"{resource}/{resource_id}"}})
    return {
        "resourceType": "Bundle",
        "type": "transaction",
        "timestamp": _instant(now),
        "entry": entries,
    }


def _put(resource: dict[str, Any]) -> dict[str, Any]:
    url = f"{resource['resourceType']}/{resource['id']}"
    return {
        "fullUrl": _full_url(resource),
        "resource": resource,
        "request": {"method": "PUT", "url": url},
    }


def _full_url(resource: dict[str, Any]) -> str:
    return f"urn:uuid:{resource['id']}"


def _instant(moment: datetime) -> str:
    return moment.isoformat().replace("+00:00", "Z")
