"""ray_cluster.yaml: valid for Ray's own autoscaler schema, and it offers what the recipes ask for."""
import copy
import glob
import json
import os

import pytest
import yaml

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CLUSTER = os.path.join(ROOT, "ray_cluster.yaml")
RECIPES = sorted(glob.glob(os.path.join(ROOT, "configs", "recipes", "*.yaml")))


@pytest.fixture(scope="module")
def cluster():
    with open(CLUSTER) as f:
        return yaml.safe_load(f)


def test_valid_against_ray_schema(cluster):
    jsonschema = pytest.importorskip("jsonschema")
    import ray.autoscaler

    with open(os.path.join(os.path.dirname(ray.autoscaler.__file__), "ray-schema.json")) as f:
        schema = json.load(f)
    jsonschema.validate(cluster, schema)


def test_ray_up_config_preparation(cluster):
    """What `ray up` does before launching anything: fill the AWS defaults, then validate."""
    pytest.importorskip("jsonschema")
    from ray.autoscaler._private.util import prepare_config, validate_config

    prepared = prepare_config(copy.deepcopy(cluster))
    validate_config(prepared)
    assert prepared["provider"]["type"] == "aws"
    assert prepared["head_node_type"] in prepared["available_node_types"]


def test_node_types(cluster):
    types = cluster["available_node_types"]
    head = types[cluster["head_node_type"]]
    assert head["resources"].get("GPU", 0) == 0, "the head is a CPU node"
    by_custom = {}
    for name, t in types.items():
        for res in ("policy_node", "rollout_node", "simulator_node"):
            if res in t["resources"]:
                by_custom[res] = t
    assert set(by_custom) == {"policy_node", "rollout_node", "simulator_node"}
    for res, t in by_custom.items():
        assert t["resources"]["GPU"] >= 4, f"{res} nodes carry 4+ GPUs"
        assert t["min_workers"] == 0 and t["max_workers"] >= 1, "GPU nodes scale from zero"
    assert cluster["idle_timeout_minutes"] > 0
    assert cluster["max_workers"] >= sum(t.get("min_workers", 0) for t in types.values())


def test_gpu_image_and_install(cluster):
    assert "gpu" in cluster["docker"]["image"]
    cmds = " ".join(cluster["setup_commands"])
    assert "[gpu]" in cmds and "pip install" in cmds
    mount_targets = set(cluster["file_mounts"])
    assert any(t in cmds for t in mount_targets), "setup installs the mounted checkout"


def test_dashboard_on_loopback(cluster):
    head = " ".join(cluster["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head
    assert "0.0.0.0" not in head
    workers = " ".join(cluster["worker_start_ray_commands"])
    assert "$RAY_HEAD_IP" in workers
    with open(CLUSTER) as f:
        text = f.read()
    assert "ray dashboard ray_cluster.yaml" in text and "ssh -L" in text, "port-forwarding is explained"


@pytest.mark.parametrize("path", RECIPES, ids=[os.path.basename(p) for p in RECIPES])
def test_recipe_resources_fit_the_cluster(cluster, path):
    """Every custom resource a recipe places actors with exists on a node type with enough GPUs."""
    from zs_ray.config import load_config

    cfg = load_config(path)
    r = cfg.resources
    types = cluster["available_node_types"].values()
    for res, workers, gpus in ((r.policy_node_resource, r.policy_workers, r.gpus_per_policy_worker),
                               (r.rollout_node_resource, r.rollout_workers, r.gpus_per_rollout_worker)):
        if res is None:
            continue
        nodes = [t for t in types if res in t["resources"]]
        assert nodes, f"{os.path.basename(path)}: no node type in ray_cluster.yaml offers '{res}'"
        node_gpus = max(t["resources"].get("GPU", 0) for t in nodes)
        per_node = int(node_gpus // gpus) if gpus else workers
        max_nodes = sum(t.get("max_workers", 0) for t in nodes)
        assert workers <= per_node * max_nodes, f"{res}: {workers} workers x {gpus} GPUs do not fit"
    if cfg.resources.gpus_per_simulator and not cfg.search.urls:
        sim = [t for t in types if "simulator_node" in t["resources"]]
        need = cfg.resources.simulator_replicas * cfg.resources.gpus_per_simulator
        assert need <= sum(t["resources"]["GPU"] * t["max_workers"] for t in sim)
        assert cfg.search.tensor_parallel_size <= max(t["resources"]["GPU"] for t in sim)
