"""zs_ray.core.batch: alignment of collated tensors and the per-rank split (pure, fast)."""
import pytest
import torch

from zs_ray.core.batch import (ROW_INDEX, collate, merge_rank_outputs, micro_batches, pad_columns, split_for_ranks,
                               trim_padding)

PAD = 0


def _trajs():
    return [
        dict(prompt_ids=[5, 6, 7], response_ids=[8, 9, 10, 11], loss_mask=[1, 0, 0, 1],
             rollout_logprobs=[-0.8, -0.9, -0.10, -0.11], reward=1.0),
        dict(prompt_ids=[5, 6], response_ids=[12], loss_mask=[1], rollout_logprobs=[-0.12], reward=0.0),
        dict(prompt_ids=[4, 5, 6, 7, 8], response_ids=[13, 14], loss_mask=[1, 1],
             rollout_logprobs=[-0.13, -0.14], reward=0.5),
    ]


def test_collate_alignment_and_masks():
    b = collate(_trajs(), pad_id=PAD, advantages=[1.0, -1.0, 0.5])
    assert b["input_ids"].shape == (3, 7)
    assert b["input_ids"][0].tolist() == [5, 6, 7, 8, 9, 10, 11]
    assert b["input_ids"][1].tolist() == [5, 6, 12, PAD, PAD, PAD, PAD]
    assert b["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0], [1] * 7]
    # loss mask: 0 on prompt and padding, the trajectory's mask on the response
    assert b["loss_mask"].tolist() == [[0, 0, 0, 1, 0, 0, 1], [0, 0, 1, 0, 0, 0, 0], [0, 0, 0, 0, 0, 1, 1]]
    # log-prob position t belongs to token t: e.g. token 11 (row 0, t=6) has -0.11, token 14 (row 2, t=6) -0.14
    lp = b["rollout_logprobs"]
    for row, tr in zip(range(3), _trajs()):
        p = len(tr["prompt_ids"])
        for j, tok in enumerate(tr["response_ids"]):
            assert b["input_ids"][row, p + j] == tok
            assert lp[row, p + j].item() == pytest.approx(tr["rollout_logprobs"][j])
    assert lp[:, 0].abs().sum() == 0
    assert (lp[b["attention_mask"] == 0] == 0).all()
    assert b["scores"].tolist() == [1.0, 0.0, 0.5]
    assert b["advantages"].tolist() == [1.0, -1.0, 0.5]
    assert b["prompt_lens"].tolist() == [3, 2, 5] and b["response_lens"].tolist() == [4, 1, 2]


def test_collate_rejects_bad_input():
    t = _trajs()
    t[0]["loss_mask"] = [1]
    with pytest.raises(ValueError, match="loss_mask"):
        collate(t, PAD)
    with pytest.raises(ValueError, match="advantages"):
        collate(_trajs(), PAD, advantages=[1.0])
    with pytest.raises(ValueError, match="empty prompt"):
        collate([dict(prompt_ids=[], response_ids=[1], loss_mask=[1], rollout_logprobs=[0.0], reward=0)], PAD)


def test_micro_batches():
    b = collate(_trajs() * 3, PAD)
    mbs = micro_batches(b, 4)
    assert [m["input_ids"].shape[0] for m in mbs] == [4, 4, 1]
    assert torch.equal(torch.cat([m["input_ids"] for m in mbs]), b["input_ids"])


@pytest.mark.parametrize("n_rows,world", [(3, 2), (5, 2), (1, 2), (4, 2), (7, 3), (2, 4)])
def test_split_for_ranks_equal_rows_and_global_tokens(n_rows, world):
    b = collate((_trajs() * 3)[:n_rows], PAD, advantages=torch.arange(n_rows, dtype=torch.float32) + 1)
    shards, tokens = split_for_ranks(b, world)
    assert len(shards) == world
    rows = {s["input_ids"].shape[0] for s in shards}
    assert len(rows) == 1  # equal rows => equal micro-batch counts for any micro-batch size
    for mbs in (1, 2, 3):
        assert len({len(micro_batches(s, mbs)) for s in shards}) == 1
    assert tokens == int(b["loss_mask"].sum())
    assert sum(int(s["loss_mask"].sum()) for s in shards) == tokens  # dummy rows carry no tokens
    for s in shards:
        dummy = s[ROW_INDEX] < 0
        assert (s["loss_mask"][dummy] == 0).all() and (s["advantages"][dummy] == 0).all()
        assert (s["attention_mask"][dummy].sum(1) > 0).all()  # valid attention (no NaN rows)
    # round trip: per-rank outputs back in the original order, dummies dropped
    outs = [s["input_ids"] * 10 for s in shards]
    assert torch.equal(merge_rank_outputs(outs, shards, n_rows), b["input_ids"] * 10)


def test_trim_and_pad_columns():
    b = collate(_trajs()[1:2], PAD)
    b = {k: (torch.cat([v, torch.zeros(1, 3, dtype=v.dtype)], 1) if v.dim() == 2 else v) for k, v in b.items()}
    t, T = trim_padding(b)
    assert T == 6 and t["input_ids"].shape == (1, 3) and t["scores"].shape == (1,)
    assert pad_columns(t["loss_mask"], T).shape == (1, 6)
