import subprocess
import sys

import pytest

from zs_ray.cli import main


def test_help_lists_commands(capsys):
    assert main(["--help"]) == 0
    out = capsys.readouterr().out
    for c in ("train", "quickstart", "eval", "world", "simulator"):
        assert c in out


def test_console_script_help():
    r = subprocess.run([sys.executable, "-m", "zs_ray.cli", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "zs-ray" in r.stdout


def test_unknown_key_is_a_clear_error(capsys):
    rc = main(["config", "configs/cpu_default.yaml", "trainer.stpes=3"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "trainer.stpes" in err and "trainer.steps" in err


def test_config_shows_resolved(capsys):
    assert main(["config", "configs/cpu_default.yaml", "trainer.steps=7"]) == 0
    assert "steps: 7" in capsys.readouterr().out


def test_unknown_command():
    with pytest.raises(SystemExit):
        main(["nope"])
