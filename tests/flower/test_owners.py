"""Several data owners in one round: per copy, the owners' updates weighted by forget-set size,
then the usual aggregate. One owner gives today's single-client result bit for bit."""

from __future__ import annotations

import json

import pytest
import torch

from mpu.checkpoint import CheckpointReader
from mpu.errors import InputError
from mpu.flower.owners import OWNERS_FILE, combine_returns, owner_weights
from mpu.server.aggregate import aggregate
from mpu.server.config import ServerConfig
from mpu.server.init import init_server
from mpu.server.publish import publish
from tests.server.stand_in_client import write_returns


def published_server(root, model_dir):
    """A work directory with round 1 published (fixed seed: two such directories publish the same copies)."""
    init_server(root / "server", str(model_dir), None, ServerConfig(copies=2, kappa=0.01, fixed_seed=5), progress=False)
    publish(root / "server", root / "outbox", progress=False)
    return root / "server", root / "outbox"


def small(scale):
    return lambda name, weights: scale * 1e-3 * torch.sin(weights)


def test_one_owner_gives_the_single_client_result_bit_for_bit(tmp_path, tiny_model_dir):
    direct, direct_outbox = published_server(tmp_path / "a", tiny_model_dir)
    combined, combined_outbox = published_server(tmp_path / "b", tiny_model_dir)
    write_returns(direct_outbox, tmp_path / "a" / "returns", small(1.0))
    write_returns(combined_outbox, tmp_path / "b" / "owner-1", small(1.0))

    returns = combine_returns(combined, [tmp_path / "b" / "owner-1"], [3], tmp_path / "b" / "returns")
    aggregate(direct, tmp_path / "a" / "returns", progress=False)
    aggregate(combined, returns, progress=False)

    left, right = CheckpointReader(direct / "models" / "round-1"), CheckpointReader(combined / "models" / "round-1")
    assert sorted(left.names()) == sorted(right.names())
    for name in left.names():
        assert torch.equal(left.get(name), right.get(name)), name
    assert not torch.equal(left.get("lm_head.weight"), CheckpointReader(tiny_model_dir).get("lm_head.weight"))


def test_two_owners_are_weighted_by_their_forget_set_sizes(tmp_path, tiny_model_dir):
    server, outbox = published_server(tmp_path, tiny_model_dir)
    write_returns(outbox, tmp_path / "owner-1", small(1.0), manifest_overrides={1: {"steps": 2}, 2: {"steps": 2}})
    write_returns(outbox, tmp_path / "owner-2", small(-2.0), manifest_overrides={1: {"steps": 5}, 2: {"steps": 5}})

    returns = combine_returns(server, [tmp_path / "owner-1", tmp_path / "owner-2"], [1, 3], tmp_path / "returns")

    for copy in (1, 2):
        first, second = CheckpointReader(tmp_path / "owner-1" / f"update-{copy}"), CheckpointReader(tmp_path / "owner-2" / f"update-{copy}")
        result = CheckpointReader(returns / f"update-{copy}")
        for name in first.names():
            torch.testing.assert_close(result.get(name), 0.25 * first.get(name) + 0.75 * second.get(name), rtol=0, atol=1e-9)
        assert json.loads((returns / f"update-{copy}" / "update.json").read_text())["steps"] == 7
    assert [owner["weight"] for owner in json.loads((returns / OWNERS_FILE).read_text())["owners"]] == [0.25, 0.75]
    report = aggregate(server, returns, progress=False)  # the combined folder is an ordinary returns folder
    assert report.round == 1 and report.step_norm > 0


def test_owners_that_ran_different_jobs_are_refused(tmp_path, tiny_model_dir):
    server, outbox = published_server(tmp_path, tiny_model_dir)
    write_returns(outbox, tmp_path / "owner-1", small(1.0))
    write_returns(outbox, tmp_path / "owner-2", small(1.0), manifest_overrides={1: {"method": "NPO"}, 2: {"method": "NPO"}})
    with pytest.raises(InputError, match="other method"):
        combine_returns(server, [tmp_path / "owner-1", tmp_path / "owner-2"], [1, 1], tmp_path / "returns")
    assert not (tmp_path / "returns").exists()


def test_a_size_below_one_is_refused():
    with pytest.raises(Exception, match="positive integers"):
        owner_weights([2, 0])
    assert owner_weights([1, 1, 2]) == [0.25, 0.25, 0.5]


def dp_record(epsilon):
    return {"epsilon": epsilon, "epsilon_one_copy": epsilon / 2, "runs": 2, "delta": 1e-5, "clip_norm": 1.0,
            "noise_multiplier": 1.0, "sample_rate": 0.5, "steps": 2, "target_epsilon": epsilon, "accountant": "rdp (opacus)"}


def test_owners_may_tighten_their_own_dp_and_the_combination_records_the_weakest(tmp_path, tiny_model_dir):
    server, outbox = published_server(tmp_path, tiny_model_dir)
    for owner, epsilon in (("owner-1", 2.0), ("owner-2", 8.0), ("owner-3", None)):
        manifest = {"training": {"epochs": 1, "dp_epsilon": epsilon or 0.0}, **({"dp": dp_record(epsilon)} if epsilon else {})}
        write_returns(outbox, tmp_path / owner, small(1.0), manifest_overrides={1: manifest, 2: manifest})

    private = combine_returns(server, [tmp_path / "owner-1", tmp_path / "owner-2"], [1, 1], tmp_path / "private")
    mixed = combine_returns(server, [tmp_path / "owner-1", tmp_path / "owner-3"], [1, 1], tmp_path / "mixed")

    combined = json.loads((private / "update-1" / "update.json").read_text())
    assert combined["dp"]["epsilon"] == 8.0 and combined["training"] == {"epochs": 1}
    assert "dp" not in json.loads((mixed / "update-1" / "update.json").read_text())
    assert aggregate(server, private, progress=False).round == 1  # the combined manifest passes the server's checks


@pytest.mark.parametrize("first, second", [({"beta": 1}, {"beta": True}), ({"beta": 0.0}, {"beta": -0.0}),
                                           ({"beta": 5}, {"beta": 5.0})], ids=["1-True", "0.0--0.0", "5-5.0"])
def test_owners_whose_settings_python_calls_equal_ran_different_jobs(tmp_path, tiny_model_dir, first, second):
    # arrange: Python's == says 1 == True, 0.0 == -0.0 and 5 == 5.0; aggregate compares JSON text
    server, outbox = published_server(tmp_path, tiny_model_dir)
    write_returns(outbox, tmp_path / "owner-1", small(1.0), manifest_overrides={1: {"hparams": first}, 2: {"hparams": first}})
    write_returns(outbox, tmp_path / "owner-2", small(1.0), manifest_overrides={1: {"hparams": second}, 2: {"hparams": second}})

    # act
    with pytest.raises(InputError, match="other hparams"):
        combine_returns(server, [tmp_path / "owner-1", tmp_path / "owner-2"], [1, 1], tmp_path / "returns")

    # assert
    assert not (tmp_path / "returns").exists()


def test_owners_each_within_the_bounds_make_a_manifest_the_server_accepts(tmp_path, tiny_model_dir):
    # arrange: steps and seconds are summed over owners; each owner is at the manifest's bounds
    server, outbox = published_server(tmp_path, tiny_model_dir)
    at_the_bounds = {"steps": 10**9, "seconds": 1.7e308}
    for owner in ("owner-1", "owner-2"):
        write_returns(outbox, tmp_path / owner, small(1.0), manifest_overrides={1: at_the_bounds, 2: at_the_bounds})

    # act
    returns = combine_returns(server, [tmp_path / "owner-1", tmp_path / "owner-2"], [1, 1], tmp_path / "returns")
    report = aggregate(server, returns, progress=False)

    # assert: steps capped at the bound, seconds unknown past a float's range; the round aggregates
    manifest = json.loads((returns / "update-1" / "update.json").read_text())
    assert manifest["steps"] == 10**9 and manifest.get("seconds") is None
    assert report.round == 1
