"""A local Ray started by the project listens and connects on loopback only."""
import ipaddress
import os

import psutil
import pytest


def _loopback(ip: str) -> bool:
    a = ipaddress.ip_address(ip.split("%")[0])
    if isinstance(a, ipaddress.IPv6Address) and a.ipv4_mapped:  # ::ffff:127.0.0.1
        a = a.ipv4_mapped
    return a.is_loopback


@pytest.mark.integration
def test_local_ray_listens_on_loopback_only(ray_session):
    ray = ray_session

    @ray.remote(num_cpus=0)
    def ping():
        return os.getpid()

    assert ray.get(ping.remote()) > 0
    ray_pids = set()
    for p in psutil.process_iter(["pid", "cmdline"]):
        cmd = " ".join(p.info["cmdline"] or [])
        if any(s in cmd for s in ("gcs_server", "raylet", "ray/_private", "ray/dashboard")) or cmd.startswith("ray::"):
            ray_pids.add(p.info["pid"])
    assert ray_pids, "no Ray processes found"
    listening, remote = [], []
    for pid in ray_pids:
        try:
            conns = psutil.Process(pid).net_connections(kind="inet")
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening.append((pid, c.laddr.ip, c.laddr.port))
            elif c.raddr:
                remote.append((pid, c.raddr.ip, c.raddr.port))
    assert listening, "Ray processes have no listening sockets?"
    bad = [x for x in listening if not _loopback(x[1])]
    assert not bad, f"Ray sockets listening off loopback: {bad}"
    bad_remote = [x for x in remote if not _loopback(x[1])]
    assert not bad_remote, f"Ray connections to non-loopback addresses: {bad_remote}"


def test_local_env_defaults_and_user_values_kept(monkeypatch):
    from zs_ray.runtime import apply_local_env

    monkeypatch.setenv("VLLM_CPU_KVCACHE_SPACE", "3")
    env = apply_local_env("/tmp/zs_home_test")
    assert env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] == "0"
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    assert env["RAY_AUTH_MODE"] == "disabled"
    assert env["VLLM_CPU_KVCACHE_SPACE"] == "3"  # a user's own setting wins


def _python(code: str):
    """`code` in a fresh interpreter whose environment has none of the loopback settings."""
    import subprocess
    import sys

    from zs_ray.runtime import LOOPBACK_ENV

    env = {k: v for k, v in os.environ.items() if k not in LOOPBACK_ENV}
    return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)


def test_importing_zs_ray_first_makes_ray_loopback_only():
    # Ray reads the setting when it is first imported; the Trainer imports ray before it starts it.
    r = _python("import zs_ray.train.trainer, ray; from ray._private import ray_constants; "
                "print(ray_constants.ENABLE_RAY_CLUSTER)")
    assert r.returncode == 0 and r.stdout.strip().splitlines()[-1] == "False", r.stderr[-2000:]


def test_ray_imported_first_is_a_clear_error_not_a_public_listener():
    r = _python("import ray; from zs_ray.runtime import init_ray; init_ray(num_cpus=1)")
    assert r.returncode != 0
    assert "RuntimeError: ray was imported before RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0" in r.stderr, r.stderr[-2000:]
