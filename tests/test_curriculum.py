"""curriculum.py: p_i = p_s + (b^(i/m) - 1)/(b - 1) * (p_e - p_s) and the per-call coin (docs/method.md)."""
import pytest

from zs_ray.core.curriculum import is_noisy, noise_probability, uniform_from_key


@pytest.mark.parametrize("step,p", [(0, 0.0), (50, 0.068), (100, 0.163), (150, 0.298), (203, 0.5)])
def test_reference_values(step, p):
    assert round(noise_probability(step, 203, 0.0, 0.5, 4.0), 3) == p


def test_defaults_are_the_reference_recipe():
    assert noise_probability(100, 203) == noise_probability(100, 203, 0.0, 0.5, 4.0)


def test_formula_exact():
    i, m, ps, pe, b = 77, 203, 0.1, 0.9, 4.0
    assert noise_probability(i, m, ps, pe, b) == pytest.approx(ps + (b ** (i / m) - 1) / (b - 1) * (pe - ps))


def test_beyond_total_steps_is_end():
    assert noise_probability(203, 203) == 0.5
    assert noise_probability(500, 203) == 0.5
    assert noise_probability(10, 0) == 0.5  # degenerate m


def test_start_025():
    assert noise_probability(0, 203, 0.25, 0.5) == 0.25
    assert noise_probability(203, 203, 0.25, 0.5) == 0.5
    mid = noise_probability(100, 203, 0.25, 0.5)
    assert 0.25 < mid < 0.375  # convex: below the linear midpoint
    assert mid == pytest.approx(0.25 + (noise_probability(100, 203) / 0.5) * 0.25)


def test_monotone_and_convex():
    ps = [noise_probability(i, 203) for i in range(204)]
    assert all(a <= b for a, b in zip(ps, ps[1:]))
    diffs = [b - a for a, b in zip(ps, ps[1:])]
    assert all(d2 >= d1 - 1e-12 for d1, d2 in zip(diffs, diffs[1:]))


def test_base_one_is_linear():
    assert noise_probability(50, 100, 0.0, 0.5, 1.0) == pytest.approx(0.25)


def test_coin_is_deterministic():
    assert is_noisy(0.5, 7, 3, "uid-1/turn-0") == is_noisy(0.5, 7, 3, "uid-1/turn-0")
    assert uniform_from_key(7, 3, "k") == uniform_from_key(7, 3, "k")
    assert uniform_from_key(7, 3, "k") != uniform_from_key(7, 4, "k")
    assert 0.0 <= uniform_from_key("anything") < 1.0


def test_coin_extremes():
    keys = [f"call-{i}" for i in range(500)]
    assert not any(is_noisy(0.0, 0, 1, k) for k in keys)
    assert all(is_noisy(1.0, 0, 1, k) for k in keys)


@pytest.mark.parametrize("p", [0.068, 0.25, 0.5])
def test_coin_frequency_matches_p(p):
    n = 20_000
    freq = sum(is_noisy(p, 1, 5, f"call-{i}") for i in range(n)) / n
    assert abs(freq - p) < 0.015  # > 4 sigma at n = 20000


def test_noise_at_is_the_one_rule():
    """Driver log and search clients both read noise_at: enabled=false is a constant p = end from step 0 (the
    schema's rule), no section is no noise, and a schedule needs total_steps."""
    from zs_ray.config import load_config, to_dict
    from zs_ray.core.curriculum import noise_at

    cfg = load_config(None, ["model.policy_path=x", "search.simulator_model=s", "curriculum.enabled=false",
                             "curriculum.start=0.1", "curriculum.end=0.4"])
    section = {**to_dict(cfg)["curriculum"], "total_steps": 10}
    assert [noise_at(section, s) for s in (0, 5, 10, 50)] == [0.4] * 4
    on = {**section, "enabled": True}
    assert noise_at(on, 0) == pytest.approx(0.1) and noise_at(on, 10) == pytest.approx(0.4)
    assert noise_at(on, 5) == pytest.approx(noise_probability(5, 10, 0.1, 0.4, 4.0))
    assert noise_at(None, 3) == 0.0 and noise_at({}, 3) == 0.0
    with pytest.raises(ValueError, match="total_steps"):
        noise_at({"enabled": True, "total_steps": None}, 0)
    assert noise_at({"enabled": False, "total_steps": None, "end": 0.3}, 7) == 0.3  # no schedule: none needed
