"""`scripts/demo` runs through: its commands and optimizer options stay valid (scripted LM).

The script is run as it is, from a copy of the repository layout in which `scripts/setup.sh`
does nothing and `.venv/bin/cotune` is the CLI with every LM replaced by the scripted test LM;
the real-model figures of the demo are in docs/results.md.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent

CLI = (
    "import sys, scripted_task, cotune.lm.factory as factory\n"
    "factory.make_lm = scripted_task.make_scripted_lm\n"
    "from cotune.cli import app\n"
    "sys.argv[0] = 'cotune'\n"
    "app()\n"
)


@pytest.fixture
def demo_root(tmp_path: Path) -> Path:
    if importlib.util.find_spec("sklearn") is None:
        pytest.skip("the demo's iris task needs scikit-learn (pip install 'cotune[tasks]')")
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(ROOT / "scripts" / "demo", root / "scripts" / "demo")
    (root / "scripts" / "setup.sh").write_text("#!/usr/bin/env bash\n")  # already set up
    bin_dir = root / ".venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "python").symlink_to(sys.executable)
    cotune = bin_dir / "cotune"
    cotune.write_text(f"#!/usr/bin/env bash\nexec {sys.executable} -c \"{CLI}\" \"$@\"\n")
    cotune.chmod(0o755)
    return root


def run_demo(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COTUNE_CACHE_DIR": str(root / "cache"),
           "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(TESTS)])}
    return subprocess.run(["bash", str(root / "scripts" / "demo"), *args], cwd=root, env=env,
                          capture_output=True, text=True, timeout=600)


def test_the_demo_compares_both_programs_on_test_and_says_where_to_look(demo_root: Path):
    done = run_demo(demo_root)
    assert done.returncode == 0, done.stderr[-3000:]
    out = done.stdout
    assert "held-out test accuracy on 50 examples:" in out
    assert "optimized by MIPRO" in out
    assert "the difference:" in out and "paired 95% interval" in out
    assert "why this program:" in out
    assert "cotune show runs/demo-iris-mipro" in out
    assert "the report page:      runs/demo-iris-mipro/report.html" in out
    assert (demo_root / "runs" / "demo-iris-mipro" / "report.html").is_file()
    assert (demo_root / "runs" / "demo-iris-mipro" / "result.json").is_file()

    again = run_demo(demo_root)  # rerunning resumes the finished run
    assert again.returncode == 0, again.stderr[-3000:]
    assert "resuming" in again.stderr
