"""Clinicians observing a patient read-only: care-team grants, observe/unobserve with a
snapshot and the replies in flight, the relationship check every clinician frame passes,
the access audit trail and the admin API."""
