"""The shape of the code holds: import-linter checks the contracts of pyproject.toml.

The layers (cli/tui > features > runtime > client > services.common), the TUI kept out of the
core, the pipeline never importing its operator, and no import cycle between packages.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_import_contracts_are_kept() -> None:
    lint_imports = Path(sys.executable).parent / "lint-imports"
    result = subprocess.run(
        [str(lint_imports), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, f"import contracts broken:\n{result.stdout}{result.stderr}"
    assert "0 broken" in result.stdout
