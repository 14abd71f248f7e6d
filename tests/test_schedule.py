import collections

from zs_ray.core.schedule import may_launch, may_train, prompts_for_step


def test_each_epoch_covers_every_row_once():
    n, per = 10, 4
    seq = [i for s in range(5) for i in prompts_for_step(n, s, per, seed=3)]  # 20 = 2 epochs
    assert sorted(seq[:10]) == list(range(10)) and sorted(seq[10:20]) == list(range(10))
    assert seq[:10] != list(range(10))  # shuffled


def test_step_batches_are_a_function_of_the_step():
    a = [prompts_for_step(37, s, 8, seed=1) for s in range(12)]
    b = [prompts_for_step(37, s, 8, seed=1) for s in (7, 3, 11, 0)]
    assert b == [a[7], a[3], a[11], a[0]]
    assert prompts_for_step(37, 2, 8, seed=2) != a[2]


def test_no_step_holds_a_row_twice_across_an_epoch_boundary():
    for n, per, seed in [(10, 4, 3), (37, 8, 1), (50, 16, 0), (23, 7, 5), (16, 8, 2), (101, 40, 9)]:
        steps = [prompts_for_step(n, s, per, seed) for s in range(6 * n // per + 1)]
        assert all(len(set(b)) == per for b in steps), (n, per, seed)
        seq = [i for b in steps for i in b]
        for e in range(len(seq) // n):  # each epoch is still a permutation: none twice, none skipped
            assert sorted(seq[e * n:(e + 1) * n]) == list(range(n)), (n, per, seed, e)


def test_staleness_rule():
    assert may_train(5, 5, 0) and not may_train(4, 5, 0)
    assert may_train(4, 5, 1) and not may_train(3, 5, 1)
    assert not may_train(6, 5, 3)  # a sample from the future is a bug, never trained on
    assert may_launch(3, 3, 0) and not may_launch(4, 3, 0) and may_launch(4, 3, 1)


def test_trainer_next_step_launches_ahead_within_staleness_and_restarts_after_a_resume():
    """Trainer.next_step's pipeline (pure bookkeeping: launching and training are recorded, not run)."""
    from omegaconf import OmegaConf

    from zs_ray.train.trainer import PendingRollout, Trainer

    tr = Trainer.__new__(Trainer)  # no Ray: only the pipeline's state
    tr.cfg = OmegaConf.create({"trainer": {"steps": 4, "staleness": 1}})
    tr.step, tr.version, tr._inflight, tr._next_launch = 0, 0, collections.deque(), 0
    launched, trained = [], []

    def launch(gen_step):
        launched.append((gen_step, tr.version))
        return PendingRollout(gen_step, 0.0, [gen_step])

    def train_step(trajs, t_gen):
        trained.append(trajs)
        tr.step, tr.version = tr.step + 1, tr.version + 1
        return {}

    tr.launch_rollouts, tr.collect_rollouts, tr.train_step = launch, lambda p: (p.jobs, 0.0), train_step
    tr.next_step()
    assert launched == [(0, 0), (1, 0)] and trained == [[0]]  # step 1 starts on version 0 (staleness 1)
    tr.next_step()
    assert launched[-1] == (2, 1) and trained == [[0], [1]]
    tr.step = 1  # as after a resume from an earlier checkpoint: step 2's launched rollouts are for another position
    tr.next_step(launch_until=3)
    assert launched[-2:] == [(1, 2), (2, 2)] and trained[-1] == [1]  # relaunched; nothing beyond step 2
    tr.next_step()
    assert launched[-1] == (3, 3) and trained[-1] == [2]
