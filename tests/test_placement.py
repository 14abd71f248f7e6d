"""Placement groups from the config: bundle shapes, a clear error naming missing resources, ready groups."""
import time

import pytest


def cfg_with(*overrides):
    from zs_ray.config import load_config

    base = ["model.policy_path=/nonexistent/policy", "search.backend=bm25", "search.corpus=/nonexistent/c.jsonl",
            "resources.placement_timeout_s=5"]
    return load_config(None, base + list(overrides))


# ---------------------------------------------------------------- shapes (no Ray)
def test_bundle_shapes_follow_the_config():
    from zs_ray.train.placement import (NODE_FRACTION, policy_bundles, policy_roles, rollout_bundles,
                                        simulator_actor_options)

    cfg = cfg_with("resources.policy_workers=4", "resources.gpus_per_policy_worker=1", "resources.cpus_per_policy_worker=8",
                   "resources.policy_node_resource=policy_node", "resources.rollout_workers=3",
                   "resources.gpus_per_rollout_worker=1", "resources.rollout_node_resource=rollout_node",
                   "resources.gpus_per_simulator=2", "resources.cpus_per_simulator=8")
    assert policy_bundles(cfg) == [{"CPU": 8.0, "GPU": 1.0, "policy_node": NODE_FRACTION}] * 4
    assert rollout_bundles(cfg) == [{"CPU": 0.5, "GPU": 1.0, "rollout_node": NODE_FRACTION}] * 3
    assert simulator_actor_options(cfg) == {"num_cpus": 8.0, "num_gpus": 2.0}
    assert simulator_actor_options(cfg, "simulator_node") == {"num_cpus": 8.0, "num_gpus": 2.0,
                                                              "resources": {"simulator_node": NODE_FRACTION}}
    # CPU default: no zero-valued GPU entry, no node resource
    cpu = cfg_with("resources.policy_workers=2")
    assert policy_bundles(cpu) == [{"CPU": 0.5}] * 2 and rollout_bundles(cpu) == [{"CPU": 0.5}]
    assert policy_roles(cpu) == ["actor"]  # kl_coef > 0, but the reference lives in the actor workers
    apart = "resources.colocate_reference=false"
    assert policy_roles(cfg_with(apart)) == ["actor", "ref"]  # its own frozen reference group
    assert policy_roles(cfg_with("algorithm.kl_coef=0", apart)) == ["actor"]
    assert policy_roles(cfg_with("algorithm.name=ppo")) == ["actor", "critic"]
    assert policy_roles(cfg_with("algorithm.name=ppo", apart)) == ["actor", "ref", "critic"]


def test_diagnose_names_what_no_node_offers():
    from zs_ray.train.placement import diagnose

    nodes = [{"id": "a" * 16, "ip": "10.0.0.1", "total": {"CPU": 8, "GPU": 1}, "available": {"CPU": 8, "GPU": 1}},
             {"id": "b" * 16, "ip": "10.0.0.2", "total": {"CPU": 8, "GPU": 1}, "available": {"CPU": 8, "GPU": 0}}]
    total, avail = {"CPU": 16, "GPU": 2}, {"CPU": 16, "GPU": 1}
    two = [{"CPU": 0.5, "GPU": 1}] * 2
    r = diagnose(two, "STRICT_PACK", nodes, total, avail)
    assert r == ["no node offers 2 GPUs (the most on one node: 1)"]
    assert diagnose(two, "SPREAD", nodes, total, avail) == [
        "available now: GPU 1 of 2 (the rest is held by other actors or placement groups)"]
    r = diagnose([{"CPU": 1, "GPU": 4}], "SPREAD", nodes, total, avail)
    assert "the cluster has GPU 2 in total, the group needs 4" in r and "no node offers a bundle of {CPU: 1, GPU: 4}" in r
    r = diagnose([{"CPU": 1, "rollout_node": 0.001}], "SPREAD", nodes, total, avail)
    assert "no node has the custom resource 'rollout_node'" in r[0]


# ---------------------------------------------------------------- real placement groups (local Ray)
def _state(pg):
    from ray.util.placement_group import placement_group_table

    return placement_group_table(pg)["state"]


@pytest.mark.parametrize("overrides, expected", [
    (["resources.gpus_per_policy_worker=1", "resources.policy_workers=2"],
     ["policy actor placement group (STRICT_PACK, 2 bundles of {CPU: 0.5, GPU: 1}) not ready after 5s",
      "the cluster has GPU 0 in total, the group needs 2", "no node offers 2 GPUs"]),
    (["resources.rollout_node_resource=nowhere_node"],
     ["rollout placement group (SPREAD, 1 bundle of {CPU: 0.5, nowhere_node: 0.001}) not ready after 5s",
      "no node has the custom resource 'nowhere_node'"]),
])
def test_missing_resource_fails_in_time_naming_it(ray_session, overrides, expected):
    import zs_ray.train.placement as placement

    made = []
    real_create = placement.create
    placement.create = lambda *a: made.append(real_create(*a)) or made[-1]
    try:
        t = time.perf_counter()
        with pytest.raises(placement.PlacementError) as e:
            placement.plan(cfg_with("algorithm.kl_coef=0", *overrides))
        assert time.perf_counter() - t < 20
    finally:
        placement.create = real_create
    msg = str(e.value)
    for part in expected:
        assert part in msg, msg
    assert made and all(_state(pg) == "REMOVED" for pg in made)  # nothing left pending


def test_satisfiable_plan_is_ready_and_places_actors(ray_session):
    import ray

    from zs_ray.train.placement import plan

    @ray.remote
    class Where:
        def node(self):
            return ray.get_runtime_context().get_node_id()

    cfg = cfg_with("resources.policy_workers=2", "resources.rollout_workers=2", "resources.colocate_reference=false")
    p = plan(cfg)
    try:
        assert set(p.policy) == {"actor", "ref"} and p.ready_s < 5
        assert all(_state(pg) == "CREATED" for _, pg in p.groups())
        nodes = p.bundle_nodes()
        assert len(nodes["policy actor"]) == 2 and len(nodes["rollout"]) == 2
        here = ray.get_runtime_context().get_node_id()
        actors = [Where.options(**p.policy_options(r, "actor")).remote() for r in range(2)]
        actors += [Where.options(**p.rollout_options(i)).remote() for i in range(2)]
        assert ray.get([a.node.remote() for a in actors], timeout=60) == [here] * 4
        assert p.rollout_options(1)["num_cpus"] == 0.5
        for a in actors:
            ray.kill(a)
    finally:
        p.remove()
    assert all(_state(pg) == "REMOVED" for _, pg in p.groups())
