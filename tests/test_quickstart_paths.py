"""configs/cpu_default.yaml names what the quickstart writes: after `zs-ray quickstart`, `zs-ray serve / eval / train
configs/cpu_default.yaml` find the world files, the policy, the simulator and the BM25 index. The world step is
run for real (a small world) into a tmp folder laid out as runs/quickstart; the later stages' outputs are compared
with quickstart_paths, the one function those stages take their paths from."""
import os

from omegaconf import OmegaConf

from zs_ray.world.quickstart import quickstart_config, quickstart_paths, write_world

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = dict(n_entities=30, n_test_entities=10, n_pretrain=20)


def _cfg():
    return OmegaConf.load(os.path.join(ROOT, "configs", "cpu_default.yaml"))


def test_config_paths_are_the_quickstart_paths():
    cfg, p = _cfg(), quickstart_paths("runs/quickstart")
    assert list(cfg.data.train_files) == [p["train"]]
    assert list(cfg.data.test_files) == [p["test"]]
    assert cfg.search.corpus == p["corpus"]
    assert cfg.search.index_dir == p["bm25"]
    assert cfg.model.policy_path == p["policy_warm"]
    assert cfg.search.simulator_model == p["simulator_sft"]
    assert cfg.simulator_sft.base_model == p["policy_pre"]
    assert cfg.simulator_sft.output_dir == p["simulator_job"]
    # the quickstart's own config (absolute paths under its --out) is the same file with the same paths
    q = quickstart_config("runs/quickstart")
    assert (list(q.data.train_files), q.search.corpus, q.search.index_dir, q.model.policy_path,
            q.search.simulator_model) == (list(cfg.data.train_files), cfg.search.corpus, cfg.search.index_dir,
                                          cfg.model.policy_path, cfg.search.simulator_model)


def test_the_quickstart_world_step_writes_where_the_config_reads(tmp_path):
    out = tmp_path / "runs" / "quickstart"
    written = write_world(str(out), seed=0, **SMALL)  # the quickstart's "world" stage, a small world
    cfg, p = _cfg(), quickstart_paths(str(out))
    for rel in [*cfg.data.train_files, *cfg.data.test_files, cfg.search.corpus]:
        assert os.path.isfile(tmp_path / rel), f"configs/cpu_default.yaml names {rel}, the quickstart did not write it"
    for key in ("corpus", "train", "test", "warmstart", "pretrain", "tokenizer"):
        assert written[key] == p[key]
    assert written["policy"] == p["policy_init"]  # the prior stage starts from it


def test_world_build_default_writes_where_the_config_reads(tmp_path, monkeypatch):
    from jobs.world import main

    monkeypatch.chdir(tmp_path)
    assert main(["build", "--no-models"] + [f"{k}={v}" for k, v in SMALL.items()]) == 0
    cfg = _cfg()
    for rel in [*cfg.data.train_files, *cfg.data.test_files, cfg.search.corpus]:
        assert os.path.isfile(tmp_path / rel), rel
