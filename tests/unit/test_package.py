from __future__ import annotations

import subprocess
import sys


def test_import_and_cli_start_without_torch():
    """`import medfair_audit` and `medfair --help` stay light: the audit loads on first use."""
    code = (
        "import sys, medfair_audit, medfair_cli.main; "
        "print('torch' in sys.modules, 'diffusers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]


def test_audit_names_resolve_to_the_library_call():
    import medfair_audit
    import medfair_audit.audit as module

    assert medfair_audit.run_audit is module.run_audit
    assert medfair_audit.AuditConfig is module.AuditConfig
    assert medfair_audit.AuditResult is module.AuditResult
    import medfair_audit.config as config
    import medfair_audit.generation as generation

    # defined once, in the torch-free config module, and the same class everywhere
    assert medfair_audit.GenerationConfig is config.GenerationConfig is generation.GenerationConfig
    assert medfair_audit.RemediationConfig is config.RemediationConfig
    assert not hasattr(medfair_audit, "no_such_name")
