"""A non-editable install (no source tree beside it) carries the default configs and runs the CLI's --help."""
import os
import shutil
import subprocess
import sys

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), os.pardir))
SHIPPED = ("zs_ray", "actors", "jobs", "configs", "pyproject.toml", "README.md")


def test_installed_package_finds_its_configs_and_runs_help(tmp_path):
    src, site, cwd = tmp_path / "src", tmp_path / "site", tmp_path / "elsewhere"
    for name in SHIPPED:  # a copy, so the build's own folders (build/, *.egg-info) stay out of the checkout
        copy = shutil.copytree if os.path.isdir(os.path.join(REPO, name)) else shutil.copy
        copy(os.path.join(REPO, name), src / name, **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                      if copy is shutil.copytree else {}))
    r = subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                        "--target", str(site), str(src)], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    cwd.mkdir()
    env = {**os.environ, "PYTHONPATH": str(site)}
    probe = ("import os, zs_ray\nfrom zs_ray.paths import default_config, config_file, is_checkout\n"
             "from zs_ray.config import load_config\n"
             "assert not is_checkout() and zs_ray.__file__.startswith(os.environ['PYTHONPATH']), zs_ray.__file__\n"
             "assert load_config(default_config()).rollout.engine\n"
             "assert load_config('configs/cpu_default.yaml').search.backend  # no configs/ in this folder\n"
             "assert os.path.isfile(config_file('recipes', 'seed_grpo.yaml'))\n"
             "from zs_ray.bench import reference_loop, rollout_bench, simulator_bench\n"
             "print(default_config())")
    r = subprocess.run([sys.executable, "-c", probe], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip() == str(site / "zs_ray" / "configs" / "cpu_default.yaml")
    for cmd in (["bench", "--help"], ["quickstart", "--help"]):
        r = subprocess.run([sys.executable, "-m", "zs_ray.cli", *cmd], cwd=cwd, env=env, capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0 and f"usage: zs-ray {cmd[0]}" in r.stdout, r.stderr[-2000:]


def test_source_tree_uses_its_own_configs():
    from zs_ray.paths import configs_dir, default_config, is_checkout

    assert is_checkout() and configs_dir() == os.path.join(REPO, "configs")
    assert os.path.isfile(default_config())
