"""The `mogen` command as a user runs it: a real subprocess of the installed entry point."""

import subprocess
import sys

import mogen


def _mogen(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mogen", *args], capture_output=True, text=True, timeout=120)


def test_version() -> None:
    result = _mogen("--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"mogen {mogen.__version__}"


def test_help_lists_the_tool() -> None:
    result = _mogen("--help")
    assert result.returncode == 0, result.stderr
    assert "Flow-DPPO" in result.stdout


def test_unknown_command_is_a_clear_error() -> None:
    result = _mogen("no-such-command")
    assert result.returncode != 0
    assert "no-such-command" in result.stderr


def test_both_packages_import() -> None:
    import reward_zoo  # noqa: F401

    assert mogen.__version__


def test_the_command_line_imports_no_heavy_library() -> None:
    """`mogen --help` and `--version` stay well under a second: the commands import torch and the model
    libraries inside their bodies, and reward_zoo's registry imports without torch."""
    heavy = ("torch", "diffusers", "transformers", "accelerate", "peft", "open_clip")
    code = f"import sys, mogen.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]"
    assert "rewards" in _mogen("--help").stdout  # the reward_zoo command group is still mounted
