"""Placement groups from the config: where the policy, rollout and simulator actors land.

- policy groups: one STRICT_PACK placement group per FSDP role (actor; ref when algorithm.kl_coef > 0 and
  resources.colocate_reference is false; critic for PPO), one bundle per rank: {CPU: cpus_per_policy_worker, GPU: gpus_per_policy_worker,
  <resources.policy_node_resource>: NODE_FRACTION}. All ranks of a group share one node (NVLink /
  loopback rendezvous); the custom resource pins that node to the policy node type.
- rollout group: one SPREAD placement group, one bundle per rollout worker (with
  resources.rollout_node_resource when set), so vLLM engines spread over the rollout nodes.
- simulator: Serve replicas cannot use these groups; `simulator_actor_options` gives the
  `ray_actor_options` (CPU, GPU and the node resource) for the Serve deployment.

`plan(cfg)` creates the groups and waits for them (resources.placement_timeout_s). A group that does
not become ready raises PlacementError naming what the cluster lacks (totals, per node, or what is held
by others right now), instead of the silent forever-pending group Ray gives by default.

Usage (driver):
    placement = plan(cfg)                                   # after ray.init / init_ray
    WorkerGroup(..., placement_group=placement.policy_group("actor"))
    RolloutWorker.options(**placement.rollout_options(i)).remote(...)
    placement.remove()                                      # on shutdown
"""
from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field
from typing import Any, Optional

# Each bundle asks for this much of its node's custom resource (nodes advertise 1): enough to pin
# the bundle to that node type, small enough that the GPU/CPU counts do the packing.
NODE_FRACTION = 0.001
ROLES = ("actor", "ref", "critic")


class PlacementError(RuntimeError):
    """A placement group did not become ready; the message says which resources are missing."""


# ---------------------------------------------------------------- bundle shapes (pure, no Ray)
def _get(section, key, default=None):
    try:
        return section.get(key, default) if hasattr(section, "get") else getattr(section, key, default)
    except Exception:  # a struct config without the key
        return default


def _bundle(cpus: float, gpus: float, node_resource: Optional[str]) -> dict[str, float]:
    b = {"CPU": float(cpus), "GPU": float(gpus)}
    if node_resource:
        b[str(node_resource)] = NODE_FRACTION
    return {k: v for k, v in b.items() if v > 0}


def policy_roles(cfg) -> list[str]:
    """The FSDP worker groups the trainer starts: actor, ref (kl_coef > 0 and the reference not colocated
    with the actor, resources.colocate_reference), critic (PPO)."""
    roles = ["actor"]
    if float(cfg.algorithm.kl_coef) > 0 and not cfg.resources.get("colocate_reference", True):
        roles.append("ref")
    if cfg.algorithm.name == "ppo":
        roles.append("critic")
    return roles


def policy_bundles(cfg) -> list[dict[str, float]]:
    r = cfg.resources
    return [_bundle(r.cpus_per_policy_worker, r.gpus_per_policy_worker, r.policy_node_resource)
            for _ in range(int(r.policy_workers))]


def rollout_bundles(cfg) -> list[dict[str, float]]:
    r = cfg.resources
    return [_bundle(r.cpus_per_rollout_worker, r.gpus_per_rollout_worker, r.rollout_node_resource)
            for _ in range(int(r.rollout_workers))]


def simulator_actor_options(cfg, node_resource: Optional[str] = None) -> dict[str, Any]:
    """`ray_actor_options` for the Serve simulator replicas. The node resource is `node_resource`,
    else `resources.simulator_node_resource` when the schema has it (none by default)."""
    r = cfg.resources
    node_resource = node_resource or _get(r, "simulator_node_resource")
    opts: dict[str, Any] = {"num_cpus": float(r.cpus_per_simulator), "num_gpus": float(r.gpus_per_simulator)}
    if node_resource:
        opts["resources"] = {str(node_resource): NODE_FRACTION}
    return opts


# ---------------------------------------------------------------- diagnosis
def _fmt(x: float) -> str:
    return f"{x:g}"


def _fmt_bundle(b: dict) -> str:
    return "{" + ", ".join(f"{k}: {_fmt(v)}" for k, v in b.items()) + "}"


def _describe_bundles(bundles: list[dict]) -> str:
    shapes = {_fmt_bundle(b) for b in bundles}
    if len(shapes) == 1:
        n = len(bundles)
        return f"{n} bundle{'s' if n != 1 else ''} of {shapes.pop()}"
    return "bundles " + ", ".join(_fmt_bundle(b) for b in bundles)


def _sum(bundles: list[dict]) -> dict[str, float]:
    out: dict[str, float] = {}
    for b in bundles:
        for k, v in b.items():
            out[k] = out.get(k, 0.0) + v
    return out


def _fits(need: dict, have: dict) -> bool:
    return all(have.get(k, 0.0) + 1e-9 >= v for k, v in need.items())


def _unit(name: str, n: float) -> str:
    return f"{_fmt(n)} {name}" + ("s" if name in ("GPU", "CPU") and n != 1 else "")


def _nodes() -> list[dict]:
    """[{id, ip, total, available}] of the alive nodes."""
    import ray

    try:
        from ray._private.state import available_resources_per_node
        avail = available_resources_per_node()
    except Exception:
        avail = {}
    out = []
    for n in ray.nodes():
        if n.get("Alive", n.get("alive")):
            nid = n.get("NodeID")
            out.append({"id": nid, "ip": n.get("NodeManagerAddress", "?"),
                        "total": dict(n.get("Resources", {})), "available": dict(avail.get(nid, {}))})
    return out


def diagnose(bundles: list[dict], strategy: str, nodes: list[dict], cluster_total: dict,
             cluster_available: dict) -> list[str]:
    """Reasons why `bundles` under `strategy` cannot be placed now (empty: none found)."""
    reasons: list[str] = []
    need = _sum(bundles)
    # 1. the cluster as a whole lacks a resource
    for k, v in need.items():
        have = cluster_total.get(k, 0.0)
        if have + 1e-9 < v:
            if have == 0 and k not in ("CPU", "GPU", "memory"):
                reasons.append(f"no node has the custom resource '{k}' (start the node with "
                               f"--resources='{{\"{k}\": 1}}' or unset the config key that names it)")
            else:
                reasons.append(f"the cluster has {k} {_fmt(have)} in total, the group needs {_fmt(v)}")
    # 2. no single node can hold what the strategy needs there
    if nodes:
        if strategy == "STRICT_PACK":
            if not any(_fits(need, n["total"]) for n in nodes):
                for k, v in need.items():
                    most = max(n["total"].get(k, 0.0) for n in nodes)
                    if most + 1e-9 < v:
                        reasons.append(f"no node offers {_unit(k, v)} (the most on one node: {_fmt(most)})")
            elif not any(_fits(need, n["available"]) for n in nodes):
                reasons.append("a node could hold the group but none has it free now: "
                               + _held_by_others(need, nodes))
        else:
            absent = {k for k in need if k not in ("CPU", "GPU", "memory") and cluster_total.get(k, 0.0) == 0}
            for b in {_fmt_bundle(b): b for b in bundles}.values():
                if not absent & set(b) and not any(_fits(b, n["total"]) for n in nodes):  # absent: said above
                    reasons.append(f"no node offers a bundle of {_fmt_bundle(b)}")
            if strategy == "STRICT_SPREAD":
                fit = sum(any(_fits(b, n["total"]) for b in bundles[:1]) for n in nodes)
                if fit < len(bundles):
                    reasons.append(f"STRICT_SPREAD needs {len(bundles)} distinct nodes, {fit} can hold a bundle")
    # 3. enough in total, but others hold it now
    if not reasons:
        short = {k: (cluster_available.get(k, 0.0), cluster_total.get(k, 0.0)) for k, v in need.items()
                 if cluster_available.get(k, 0.0) + 1e-9 < v}
        if short:
            reasons.append("available now: " + ", ".join(f"{k} {_fmt(a)} of {_fmt(t)}" for k, (a, t) in short.items())
                           + " (the rest is held by other actors or placement groups)")
    return reasons


def _held_by_others(need: dict, nodes: list[dict]) -> str:
    parts = []
    for n in nodes:
        if _fits(need, n["total"]):
            free = ", ".join(f"{k} {_fmt(n['available'].get(k, 0.0))}/{_fmt(n['total'].get(k, 0.0))}" for k in need)
            parts.append(f"node {n['ip']} {n['id'][:8]} free {free}")
    return "; ".join(parts) + " (held by other actors or placement groups)"


def explain(bundles: list[dict], strategy: str) -> list[str]:
    import ray

    return diagnose(bundles, strategy, _nodes(), ray.cluster_resources(), ray.available_resources())


# ---------------------------------------------------------------- creating and waiting
def create(bundles: list[dict], strategy: str, what: str):
    from ray.util.placement_group import placement_group

    pg = placement_group(bundles, strategy=strategy, name=f"zs-{what.replace(' ', '-')}-{uuid.uuid4().hex[:6]}")
    pg._zs_meta = (list(bundles), strategy)  # for wait_ready's message
    return pg


def wait_ready(pg, timeout_s: float, what: str, bundles: Optional[list[dict]] = None,
               strategy: Optional[str] = None, reported_timeout_s: Optional[float] = None) -> float:
    """Wait until `pg` is placed; returns seconds waited. Raises PlacementError naming what is missing."""
    meta = getattr(pg, "_zs_meta", None)
    bundles = bundles or (meta[0] if meta else pg.bundle_specs)
    strategy = strategy or (meta[1] if meta else "?")
    t = time.perf_counter()
    if pg.wait(timeout_seconds=float(timeout_s)):
        return time.perf_counter() - t
    reasons = explain(bundles, strategy) or [
        "the resources exist but were not granted (an autoscaler still adding nodes? raise "
        "resources.placement_timeout_s)"]
    raise PlacementError(f"{what} placement group ({strategy}, {_describe_bundles(bundles)}) not ready after "
                         f"{_fmt(float(reported_timeout_s or timeout_s))}s: " + "; ".join(reasons))


def remove_group(pg) -> None:
    from ray.util.placement_group import remove_placement_group

    try:
        remove_placement_group(pg)
    except Exception:  # already removed, or Ray is gone
        pass


@dataclass
class Placement:
    """The placement groups of one training run and the `.options()` of each actor."""
    policy: dict[str, Any]  # role -> STRICT_PACK placement group
    rollout: Any  # SPREAD placement group
    policy_resources: dict[str, float]  # per actor: num_cpus / num_gpus
    rollout_resources: dict[str, float]
    simulator_actor_options: dict[str, Any] = field(default_factory=dict)
    ready_s: float = 0.0

    def groups(self) -> list[tuple[str, Any]]:
        return [(f"policy {role}", pg) for role, pg in self.policy.items()] + [("rollout", self.rollout)]

    def policy_group(self, role: str = "actor"):
        """The placement group to pass as WorkerGroup(placement_group=...) (bundle index = rank)."""
        return self.policy.get(role)

    def policy_options(self, rank: int, role: str = "actor") -> dict[str, Any]:
        return {**self.policy_resources, "scheduling_strategy": _strategy(self.policy[role], rank)}

    def rollout_options(self, index: int) -> dict[str, Any]:
        """`RolloutWorker.options(**placement.rollout_options(i))`."""
        return {**self.rollout_resources, "scheduling_strategy": _strategy(self.rollout, index)}

    def wait(self, timeout_s: float) -> float:
        t = time.perf_counter()
        deadline = t + float(timeout_s)
        for what, pg in self.groups():  # one deadline for all groups
            wait_ready(pg, max(0.0, deadline - time.perf_counter()), what, reported_timeout_s=timeout_s)
        self.ready_s = time.perf_counter() - t
        return self.ready_s

    def bundle_nodes(self) -> dict[str, list[str]]:
        """group -> node id of each bundle (after wait)."""
        from ray.util.placement_group import placement_group_table

        out = {}
        for what, pg in self.groups():
            b2n = placement_group_table(pg).get("bundles_to_node_id", {})
            out[what] = [b2n.get(i) for i in range(len(pg.bundle_specs))]
        return out

    def remove(self) -> None:
        for _, pg in self.groups():
            remove_group(pg)


def _strategy(pg, index: int):
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=int(index),
                                            placement_group_capture_child_tasks=True)


def plan(cfg, wait: bool = True, timeout_s: Optional[float] = None,
         simulator_node_resource: Optional[str] = None) -> Placement:
    """Create the run's placement groups (Ray must be initialised) and, by default, wait for them
    up to resources.placement_timeout_s. On failure every group created here is removed again."""
    r = cfg.resources
    pol, rol = policy_bundles(cfg), rollout_bundles(cfg)
    groups = {}
    try:
        for role in policy_roles(cfg):
            groups[role] = create(pol, "STRICT_PACK", f"policy {role}")
        rollout = create(rol, "SPREAD", "rollout")
    except BaseException:
        for pg in groups.values():
            remove_group(pg)
        raise
    placement = Placement(
        policy=groups, rollout=rollout,
        policy_resources={"num_cpus": float(r.cpus_per_policy_worker), "num_gpus": float(r.gpus_per_policy_worker)},
        rollout_resources={"num_cpus": float(r.cpus_per_rollout_worker), "num_gpus": float(r.gpus_per_rollout_worker)},
        simulator_actor_options=simulator_actor_options(cfg, simulator_node_resource))
    if wait:
        try:
            placement.wait(r.placement_timeout_s if timeout_s is None else timeout_s)
        except BaseException:
            placement.remove()
            raise
    return placement
