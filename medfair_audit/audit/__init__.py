"""The audit: generate, classify, estimate subgroup shares with their uncertainty, report.

``config`` (what an audit takes), ``run`` (:func:`run_audit`), ``quality`` (FID/KID at equal n)
and ``result`` (:class:`AuditResult`, saved and loaded as a folder; ``audit.schema.json`` is the
JSON Schema of its ``audit.json``).
"""

from ..config import AuditConfig
from .config import read_prompts
from .result import AUDIT_SCHEMA_VERSION, AuditResult, audit_schema, read_audit_json
from .run import run_audit

__all__ = [
    "AUDIT_SCHEMA_VERSION",
    "AuditConfig",
    "AuditResult",
    "audit_schema",
    "read_audit_json",
    "read_prompts",
    "run_audit",
]
