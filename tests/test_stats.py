"""kdlab.stats: paired differences, Student-t intervals and verdicts, against hand-computed numbers."""

import math

import pytest

from kdlab import stats

T_975_2 = 4.302652729911275  # Student t, 97.5 % quantile, 2 degrees of freedom (tables: 4.303)


def test_t_quantiles_match_the_printed_tables():
    assert stats.t_quantile(0.975, 1) == pytest.approx(12.706, abs=1e-3)
    assert stats.t_quantile(0.975, 2) == pytest.approx(T_975_2)
    assert stats.t_quantile(0.975, 4) == pytest.approx(2.776, abs=1e-3)
    assert stats.t_quantile(0.975, 29) == pytest.approx(2.045, abs=1e-3)
    assert stats.t_quantile(0.975, 10**6) == pytest.approx(1.960, abs=1e-3)
    with pytest.raises(ValueError):
        stats.t_quantile(0.975, 0)


def test_mean_ci_of_three_values_is_the_t_interval():
    ci = stats.mean_ci([1.0, 2.0, 3.0])  # mean 2, sd 1: half-width 4.3027 / sqrt(3) = 2.48414
    assert ci.mean == 2.0 and ci.std == 1.0 and ci.n == 3
    assert ci.low == pytest.approx(2 - 2.484137711750) and ci.high == pytest.approx(2 + 2.484137711750)
    assert stats.mean_ci([1.0, 2.0, 3.0], level=0.9).high < ci.high  # a lower level, a narrower interval


def test_mean_ci_of_one_or_no_value_has_no_interval():
    one, none = stats.mean_ci([0.5]), stats.mean_ci([])
    assert one.mean == 0.5 and math.isnan(one.low) and math.isnan(one.high) and one.n == 1
    assert math.isnan(none.mean) and none.n == 0
    with pytest.raises(ValueError):
        stats.mean_ci([1.0, math.nan])


def test_paired_delta_pairs_seeds_and_drops_pairs_with_a_diverged_member():
    method = {0: 0.5, 1: 0.6, 2: 0.7, 3: 0.9, 4: 0.8}
    reference = {0: 0.4, 1: 0.4, 2: 0.4, 3: None, 5: 0.1}  # seed 3 diverged; seeds 4 and 5 have no partner
    delta = stats.paired_delta(method, reference)
    assert delta.seeds == (0, 1, 2) and delta.dropped == 1  # differences 0.1, 0.2, 0.3
    assert delta.mean == pytest.approx(0.2)
    half = T_975_2 * 0.1 / math.sqrt(3)
    assert delta.ci.low == pytest.approx(0.2 - half) and delta.ci.high == pytest.approx(0.2 + half)
    assert stats.paired_delta({0: math.nan, 1: 0.3}, {0: 0.1, 1: 0.2}).seeds == (1,)  # NaN = diverged


def test_paired_and_unpaired_differ_where_the_seed_effect_is_shared():
    # Seeds move both arms together: the paired interval is narrow although each arm varies widely.
    method, reference = {0: 0.30, 1: 0.50, 2: 0.70}, {0: 0.28, 1: 0.48, 2: 0.67}
    delta = stats.paired_delta(method, reference)
    assert delta.mean == pytest.approx(0.07 / 3) and delta.ci.low > 0  # differences 0.02, 0.02, 0.03
    assert stats.verdict(delta) == stats.SUPPORTED


@pytest.mark.parametrize("values, direction, expected", [
    ([2.0, 3.0, 4.0], "greater", stats.SUPPORTED),  # interval (0.52, 5.48)
    ([2.0, 3.0, 4.0], "less", stats.CONTRADICTED),
    ([-2.0, -3.0, -4.0], "greater", stats.CONTRADICTED),
    ([-2.0, -3.0, -4.0], "less", stats.SUPPORTED),
    ([-1.0, 1.0, 2.0], "greater", stats.INCONCLUSIVE),  # mean 0.67, interval (-2.9, 4.3)
    ([-1.0, 1.0, 2.0], "less", stats.INCONCLUSIVE),
    ([0.0, 0.0, 0.0], "greater", stats.INCONCLUSIVE),  # [0, 0] excludes nothing
    ([2.0], "greater", stats.INCONCLUSIVE),  # one pair: no interval
    ([], "greater", stats.INCONCLUSIVE),
])
def test_verdicts(values, direction, expected):
    assert stats.verdict(stats.mean_ci(values), direction) == expected


def test_verdict_rejects_an_unknown_direction():
    with pytest.raises(ValueError, match="direction"):
        stats.verdict(stats.mean_ci([1.0, 2.0]), "up")
