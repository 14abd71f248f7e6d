import json
import os

import pytest

from zs_ray.train import checkpoint as ckpt


def _parts(d):
    with open(os.path.join(d, "weights.bin"), "wb") as f:
        f.write(b"x" * 100)


def test_save_latest_and_prune(tmp_path):
    root = str(tmp_path)
    for s in (1, 2, 3):
        ckpt.save(root, s, {"step": s}, _parts, keep=2)
    assert ckpt.latest(root).endswith("step_000003")
    assert ckpt.load_driver_state(ckpt.latest(root)) == {"step": 3}
    assert sorted(d for d in os.listdir(root) if d.startswith("step_")) == ["step_000002", "step_000003"]


def test_interrupted_write_keeps_previous_checkpoint(tmp_path):
    root = str(tmp_path)
    ckpt.save(root, 1, {"step": 1}, _parts)

    def crash(d):
        _parts(d)
        raise KeyboardInterrupt("killed halfway")

    with pytest.raises(KeyboardInterrupt):
        ckpt.save(root, 2, {"step": 2}, crash)
    assert os.path.isdir(os.path.join(root, "step_000002.tmp"))  # the half-written one is left aside
    assert ckpt.latest(root).endswith("step_000001")
    assert json.load(open(os.path.join(ckpt.latest(root), ckpt.DRIVER_STATE)))["step"] == 1
    # a stale LATEST pointer to an incomplete folder is ignored too
    ckpt.atomic_write_text(os.path.join(root, ckpt.LATEST), "step_000002.tmp")
    assert ckpt.latest(root).endswith("step_000001")


def test_no_checkpoint(tmp_path):
    assert ckpt.latest(str(tmp_path / "none")) is None
