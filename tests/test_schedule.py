from zs_ray.core.schedule import LaunchQueue, may_launch, may_train, prompts_for_step


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



def test_launch_queue_launches_ahead_within_staleness_and_relaunches_after_a_resume():
    """The trainer's pipeline (Trainer.next_step): launches are recorded, nothing is generated."""
    q, launched = LaunchQueue(), []

    def launch(step):
        launched.append((step, version))
        return f"rollouts of {step}"

    version = 0
    assert q.take(0, version, 1, 4, launch) == "rollouts of 0"
    assert launched == [(0, 0), (1, 0)]  # step 1 generates on version 0 while step 0 trains (staleness 1)
    version = 1
    assert q.take(1, version, 1, 4, launch) == "rollouts of 1" and launched[-1] == (2, 1)
    # the run resumes at step 1 (version 1): the launch of step 2 held is dropped and done again
    assert q.take(1, version, 1, 3, launch) == "rollouts of 1"
    assert launched[-2:] == [(1, 1), (2, 1)]  # and nothing at or beyond until=3
    version = 2
    assert q.take(2, version, 0, 4, launch) == "rollouts of 2" and launched[-1] == (2, 1)  # staleness 0: none ahead
    version = 3
    assert q.take(3, version, 0, 4, launch) == "rollouts of 3" and launched[-1] == (3, 3)
