"""The LPBF chain's glue (flare.am.chain): shards, splits, a sandbox bound to its settings."""
import json

import pytest

from flare.am.chain import PAPER_TEST_FRACTION, shard_of, simulate_shard, split_sizes


def test_shards_partition_the_cases():
    items = [f"case{i:05d}" for i in range(11)]
    parts = [shard_of(items, i, 3) for i in range(3)]
    assert sorted(sum(parts, [])) == items and parts[1] == items[1::3]
    with pytest.raises(ValueError, match=r"shard must lie in \[0, 3\)"):
        shard_of(items, 3, 3)


def test_split_sizes_follow_the_paper_fraction_unless_given():
    assert split_sizes(1390) == (1100, 290)  # the paper's split, from its fraction
    assert PAPER_TEST_FRACTION == pytest.approx(290 / 1390)
    assert split_sizes(36, test_fraction=0.25) == (27, 9)
    assert split_sizes(36, num_train=30) == (30, 6)
    assert split_sizes(36, num_train=10, num_test=5) == (10, 5)
    with pytest.raises(ValueError, match="cannot be split"):
        split_sizes(1)


def test_a_sandbox_refuses_cases_of_other_settings(tmp_path):
    sandbox = tmp_path / "SandBox"
    done = simulate_shard(sandbox, tmp_path / "m.json", {"cases": 1, "size": 8.0, "fail_fraction": 0.0},
                          progress=False)
    assert len(done) == 1 and (sandbox / "case00000" / "mechanical.out").exists()
    assert json.loads((sandbox / "settings.json").read_text())["size"] == 8.0
    # the same settings resume (nothing to do); other settings would mix two datasets: refused
    assert simulate_shard(sandbox, tmp_path / "m.json", {"cases": 1, "size": 8.0, "fail_fraction": 0.0},
                          progress=False) == done
    with pytest.raises(ValueError, match=r"size: 8.0 there, 10.0 now"):
        simulate_shard(sandbox, tmp_path / "m.json", {"cases": 1, "size": 10.0, "fail_fraction": 0.0})
    with pytest.raises(ValueError, match="unknown LPBF simulation option"):
        simulate_shard(sandbox, tmp_path / "m.json", {"case": 3})
