"""Exporting the patient's record as FHIR R4: pain reports as Observations, served to the
patient and their care team, printed by the command line, and sent to a FHIR server."""
