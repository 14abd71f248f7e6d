"""Two Ray nodes on this machine (ray.cluster_utils.Cluster), marked by custom resources like the
cluster's node types: {"policy_node": 1} and {"rollout_node": 1}.

The real Trainer runs 4 steps (1 FSDP policy worker + its reference worker, 1 vLLM rollout worker,
BM25 search inside the rollout worker: the Serve simulator is left out to keep the run short) with
its actors placed through zs_ray.train.placement: the policy groups on the policy node, the rollout worker
(and so its search) on the rollout node, checked by node id. After step 2 the rollout node is
killed (`cluster.remove_node(..., allow_graceful=False)`, like a lost machine); the next rollout call
must fail fast with Ray's actor-died error rather than hang (or, once the trainer restarts lost
rollout workers, the run may finish: the child reports which one happened).

The cluster runs in a child process (this file run as a script), so it has its own Ray, apart from
the test session's `ray_session`, with a private temp dir (RAY_TMPDIR too).
"""
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

import pytest

from zs_ray.runtime import free_port

pytestmark = pytest.mark.integration

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DETECT_BOUND_S = 90.0



def _overrides(world: str, out: str) -> list[str]:
    return [f"data.train_files=[{world}/world/train.parquet]", f"model.policy_path={world}/policy",
            "search.backend=bm25", f"search.corpus={world}/world/corpus.jsonl", f"search.index_dir={out}/bm25",
            "search.topk=2", "rollout.n_samples=2", "rollout.max_turns=1", "rollout.max_turn_tokens=16",
            "rollout.max_obs_tokens=96", "rollout.max_context_tokens=512", "rollout.kv_cache_gb=0.25",
            "trainer.prompts_per_step=3", f"trainer.output_dir={out}/run", "trainer.steps=4", "trainer.staleness=0",
            "trainer.checkpoint_every=0", "trainer.sample_every=0", "trainer.rollout_timeout_s=300",
            "algorithm.lr=1e-3", "algorithm.micro_batch_size=4", "resources.policy_workers=1",
            "resources.rollout_workers=1", "resources.placement_timeout_s=60",
            "resources.policy_node_resource=policy_node", "resources.rollout_node_resource=rollout_node",
            f"tracking.uri=sqlite:///{out}/mlflow.db", "tracking.experiment=zs-multinode"]


# ---------------------------------------------------------------- the child process
def child(tmp: str) -> dict:
    from zs_ray.runtime import apply_local_env

    apply_local_env(tmp)
    import ray
    from ray.cluster_utils import Cluster

    import actors.rollout_worker as rw
    import actors.worker_group as wg
    from zs_ray.config import load_config
    from zs_ray.train import trainer as trainer_mod
    from zs_ray.train.placement import plan
    from zs_ray.world.files import build_world_assets

    world, out = os.path.join(tmp, "world"), os.path.join(tmp, "out")
    build_world_assets(world, seed=0, n_entities=40, n_test_entities=8, n_pretrain=0)
    cfg = load_config(None, _overrides(world, out))
    res: dict = {}
    cluster = Cluster(initialize_head=True, head_node_args=dict(
        num_cpus=1, node_ip_address="127.0.0.1", temp_dir=os.path.join(tmp, "ray"), include_dashboard=False,
        gcs_server_port=free_port(), dashboard_agent_listen_port=free_port()))
    tr = placement = None
    try:
        policy_node = cluster.add_node(num_cpus=2, resources={"policy_node": 1}, node_ip_address="127.0.0.1")
        rollout_node = cluster.add_node(num_cpus=1, resources={"rollout_node": 1}, node_ip_address="127.0.0.1")
        cluster.wait_for_nodes()
        from zs_ray.runtime import init_ray

        init_ray(address=cluster.address)
        res["nodes"] = {"policy": policy_node.node_id, "rollout": rollout_node.node_id,
                        "head": cluster.head_node.node_id}

        # The Trainer does not place its actors yet (resources.*_node_resource is unused there):
        # wire zs_ray.train.placement in from outside, exactly as Trainer.__init__ would.
        wired = "placement" in open(trainer_mod.__file__).read()
        res["trainer_wires_placement"] = wired
        if not wired:
            placement = plan(cfg)
            res["bundle_nodes"] = placement.bundle_nodes()
            OrigGroup, OrigRollout = wg.WorkerGroup, rw.RolloutWorker

            class PlacedGroup(OrigGroup):
                def __init__(self, n, path, algo, model, role="actor", *rest, **kw):
                    kw.setdefault("placement_group", placement.policy_group(role))
                    super().__init__(n, path, algo, model, role, *rest, **kw)

            class PlacedRollout:
                @staticmethod
                def options(**_):
                    class _R:
                        @staticmethod
                        def remote(*args, **kwargs):
                            return OrigRollout.options(**placement.rollout_options(args[3])).remote(*args, **kwargs)
                    return _R

            wg.WorkerGroup, rw.RolloutWorker = PlacedGroup, PlacedRollout

        state = {"removed_at": None}

        def progress(msg):
            print(msg, flush=True)
            if str(msg).startswith("[fault]"):
                res.setdefault("fault_messages", []).append(str(msg))
            if str(msg).startswith("[train] step 2/") and state["removed_at"] is None:
                res["steps_before_removal"] = tr.step
                cluster.remove_node(rollout_node, allow_graceful=False)  # a lost machine
                state["removed_at"] = time.perf_counter()

        tr = trainer_mod.Trainer(cfg, progress)
        where = ray.get([w.node_info.remote() for w in tr.policy.workers], timeout=60)
        res["policy_worker_nodes"] = [w["node_id"] for w in where]
        if tr.ref is not None:
            res["ref_worker_nodes"] = [w["node_id"] for w in ray.get([w.node_info.remote() for w in tr.ref.workers])]
        res["rollout_worker_nodes"] = [ray._private.state.actors(w._actor_id.hex())["Address"]["NodeID"]
                                       for w in tr.rollout]
        try:
            last = tr.train()
            res["outcome"] = "recovered"
            res["final_step"] = tr.step
            res["last_version"] = last.get("policy/version")
        except Exception as e:  # noqa: BLE001 - report what the driver saw
            res["outcome"] = "error"
            res["error_type"] = type(e).__name__
            if state["removed_at"] is not None:
                res["detect_s"] = time.perf_counter() - state["removed_at"]
            chain, x = [], e
            while x is not None and len(chain) < 8:  # the error and its causes
                chain += [c.__name__ for c in type(x).__mro__]
                x = x.__cause__ or x.__context__
            res["error_chain"] = chain
            res["error"] = str(e)[:1500]
            res["final_step"] = tr.step
        if placement is not None:  # the lost node, as the placement module reports it
            from zs_ray.train.placement import PlacementError, wait_ready
            try:
                wait_ready(placement.rollout, 5, "rollout")
                res["rollout_group_after_loss"] = "ready"
            except PlacementError as e:
                res["rollout_group_after_loss"] = str(e)
    finally:
        if tr is not None:
            try:
                tr.shutdown()
            except Exception as e:  # noqa: BLE001
                res["shutdown_error"] = repr(e)[:300]
        if placement is not None:
            placement.remove()
        ray.shutdown()
        cluster.shutdown()
    return res


# ---------------------------------------------------------------- the test
def test_two_nodes_placement_and_lost_rollout_node():
    tmp = tempfile.mkdtemp(prefix="zsmn_", dir="/tmp")  # short: Ray's unix socket paths must fit 107 chars
    env = {**os.environ, "RAY_TMPDIR": tmp, "ZS_RAY_HOME": tmp, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "RAY_AUTH_MODE": "disabled", "PYTHONPATH": ROOT + os.pathsep + os.environ.get("PYTHONPATH", "")}
    env.pop("RAY_ADDRESS", None)
    try:
        p = subprocess.run([sys.executable, os.path.abspath(__file__), tmp], cwd=ROOT, env=env,
                           capture_output=True, text=True, timeout=420)
        lines = [ln for ln in p.stdout.splitlines() if ln.startswith("RESULT ")]
        assert p.returncode == 0 and lines, f"rc={p.returncode}\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
        res = json.loads(lines[-1][len("RESULT "):])
        print(json.dumps(res, indent=1))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    nodes = res["nodes"]
    assert len(set(nodes.values())) == 3
    # placement: policy (and reference) ranks on the policy node, the rollout worker (+ its BM25) on the rollout node
    assert res["policy_worker_nodes"] == [nodes["policy"]]
    assert res.get("ref_worker_nodes", [nodes["policy"]]) == [nodes["policy"]]
    assert res["rollout_worker_nodes"] == [nodes["rollout"]]
    if "bundle_nodes" in res:
        assert res["bundle_nodes"]["policy actor"] == [nodes["policy"]]
        assert res["bundle_nodes"]["rollout"] == [nodes["rollout"]]
    # the run trained on both nodes, then lost the rollout node after step 2
    assert res["steps_before_removal"] == 2
    if res["outcome"] == "error":  # the run stops with an error caused by the actor's death, fast, not a hang
        assert "RayActorError" in res["error_chain"], res
        assert res["detect_s"] < DETECT_BOUND_S, res
        assert res["final_step"] == 2
    else:  # the trainer replaced the lost rollout worker and finished
        assert res["outcome"] == "recovered" and res["final_step"] == 4, res
    if "rollout_group_after_loss" in res:  # the placement module names what the lost node took with it
        assert "no node has the custom resource 'rollout_node'" in res["rollout_group_after_loss"], res


if __name__ == "__main__":
    sys.path.insert(0, ROOT)
    result = child(sys.argv[1])
    print("RESULT " + json.dumps(result), flush=True)
