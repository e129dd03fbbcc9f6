"""Which heavy modules an import statement pulls in, checked in a fresh interpreter."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterable


def modules_loaded_by(statement: str, candidates: Iterable[str]) -> list[str]:
    """The ``candidates`` found in ``sys.modules`` after running ``statement`` in a new
    Python process (this one has long imported them)."""
    code = (f"import json, sys; {statement}; "
            f"print(json.dumps(sorted({sorted(candidates)!r} & sys.modules.keys())))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)
