"""``nla --help``, ``nla compare`` and a Lightning command's ``--help`` answer without loading PyTorch: the help is
rendered once and kept (nla/cli/help_cache.py)."""

import os
import subprocess
import sys

import pytest

LOADED = (
    "import sys\nfrom nla.cli import main\ntry:\n    main(sys.argv[1:])\nexcept SystemExit:\n    pass\n"
    "print('torch loaded' if 'torch' in sys.modules else 'torch not loaded', file=sys.stderr)"
)


def nla_in_a_process(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", LOADED, *args], capture_output=True, text=True, env=env, timeout=300)


def test_help_and_compare_answer_without_loading_pytorch(trained_run):
    shown = nla_in_a_process("--help")
    assert "torch not loaded" in shown.stderr and "    compare " in shown.stdout
    compared = nla_in_a_process("compare", str(trained_run))
    assert "torch not loaded" in compared.stderr and "| run | evaluation |" in compared.stdout


@pytest.mark.slow
def test_a_lightning_commands_help_is_rendered_once_then_printed_without_loading_pytorch(tmp_path):
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path), "COLUMNS": "100"}
    first, second = nla_in_a_process("fit", "--help", env=env), nla_in_a_process("fit", "--help", env=env)
    assert "torch loaded" in first.stderr and "torch not loaded" in second.stderr
    assert second.stdout == first.stdout and "--trainer.precision" in first.stdout
    (kept,) = (tmp_path / "nla" / "help").glob("fit-*.txt")
    kept.write_text(kept.read_text() + "edited")
    assert nla_in_a_process("fit", "--help", env=env).stdout.endswith("edited")  # printed from the file
    env["COLUMNS"] = "140"  # another width is another rendering
    assert "torch loaded" in nla_in_a_process("fit", "--help", env=env).stderr
