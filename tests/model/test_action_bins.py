"""Per-dimension quantile action bins (LAPA stage 3)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from lavla.model.action_bins import QuantileActionBins


def _samples(m: int = 4000, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = np.stack([
        rng.normal(size=m),  # continuous, unbounded tails
        np.clip(rng.normal(0.3, 0.6, size=m), -1.0, 1.0),  # clipped to [-1, 1]: point masses at the bounds
        (rng.random(m) < 0.3).astype(np.float64),  # binary gripper, 30% closed
        np.full(m, 0.25),  # constant dim
        np.full(m, np.nan),  # padded dim: never valid
    ], axis=1).astype(np.float32)
    x[rng.random(m) < 0.2, 1] = np.nan  # some invalid steps
    return x


def _held_in(x: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.where(np.isnan(x), 0.0, x).astype(np.float32))


def test_fit_matches_pandas_qcut_on_continuous_dims() -> None:
    pd = pytest.importorskip("pandas")
    x = _samples()
    bins = QuantileActionBins.fit(x, 64)
    for d in (0, 1):
        v = x[:, d][~np.isnan(x[:, d])]
        codes, edges = pd.qcut(v, 64, labels=False, retbins=True, duplicates="drop")
        n = len(edges) - 1
        assert int(bins.num_valid[d]) == n
        np.testing.assert_allclose(bins.edges[d, : n + 1].numpy(), edges.astype(np.float32), rtol=0, atol=1e-6)
        full = np.zeros((len(v), 5), dtype=np.float32)
        full[:, d] = v
        np.testing.assert_array_equal(bins.encode(torch.from_numpy(full))[:, d].numpy(), codes)
    # The clipped dim has point masses at +-1: duplicate quantile edges were dropped, the rest is +inf padding.
    n1 = int(bins.num_valid[1])
    assert n1 < 64 and torch.isinf(bins.edges[1, n1 + 1 :]).all()


def test_round_trip_error_is_at_most_half_the_widest_bin() -> None:
    x = _samples()
    bins = QuantileActionBins.fit(x, 256)
    a = _held_in(x)
    ids = bins.encode(a)
    assert ids.dtype == torch.int64 and ids.shape == a.shape
    assert (ids >= 0).all() and (ids < bins.num_valid).all()
    err = (bins.decode(ids) - a).abs()
    half_widest = bins.bin_widths().max(dim=1).values / 2
    real = torch.from_numpy(~np.isnan(x))
    for d in range(4):  # dim 4 is never valid
        assert err[real[:, d], d].max() <= half_widest[d] + 1e-6, d
    # Dense continuous dims: every bin is narrow except the tails, so the typical error is tiny.
    assert err[:, 0].median() < 0.01


def test_binary_gripper_and_degenerate_dims() -> None:
    x = _samples()
    bins = QuantileActionBins.fit(x, 256)
    assert bins.num_valid.tolist()[2:] == [2, 1, 1]
    a = _held_in(x)
    dec = bins.decode(bins.encode(a))
    torch.testing.assert_close(dec[:, 2], a[:, 2], rtol=0, atol=0)  # 0 and 1 decode exactly
    assert (dec[:, 3] == 0.25).all()  # constant dim: its value
    assert (dec[:, 4] == 0.0).all()  # never-valid dim: 0
    # A gripper that never moved gets one bin.
    one = QuantileActionBins.fit(np.ones((50, 1), dtype=np.float32), 256)
    assert one.num_valid.tolist() == [1] and one.decode(one.encode(torch.tensor([[0.0], [1.0], [3.0]]))).eq(1.0).all()


def test_out_of_range_actions_go_to_end_bins_and_ids_are_clamped() -> None:
    x = _samples()
    bins = QuantileActionBins.fit(x, 32)
    nv = bins.num_valid
    probe = torch.tensor([[-1e6] * 5, [1e6] * 5])
    ids = bins.encode(probe)
    assert (ids[0] == 0).all() and (ids[1] == nv - 1).all()
    wild = torch.tensor([[-3, 500, 7, 99, -1]])
    torch.testing.assert_close(bins.decode(wild), bins.decode(torch.minimum(wild.clamp_min(0), nv - 1)))
    # Any leading shape.
    assert bins.encode(torch.zeros(2, 3, 4, 5)).shape == (2, 3, 4, 5)
    with pytest.raises(ValueError):
        bins.encode(torch.zeros(3, 4))


def test_json_and_state_dict_round_trip_and_dtype_kept() -> None:
    x = _samples()
    bins = QuantileActionBins.fit(x, 128)
    data = json.loads(json.dumps(bins.to_json()))
    assert data["num_bins"] == 128 and data["action_dim"] == 5
    assert [len(e) for e in data["edges"]] == [n + 1 for n in bins.num_valid.tolist()]
    again = QuantileActionBins.from_json(data)
    for name in ("edges", "num_valid", "centers"):
        assert torch.equal(getattr(again, name), getattr(bins, name)), name
    # Edges only (e.g. converted from LAPA's CSV): centres are edge midpoints.
    mid = QuantileActionBins.from_json({k: data[k] for k in ("num_bins", "action_dim", "edges")})
    e = bins.edges[0, : int(bins.num_valid[0]) + 1]
    torch.testing.assert_close(mid.centers[0, : int(bins.num_valid[0])], (e[:-1] + e[1:]) / 2)
    # State dict into an empty module of the same shape.
    empty = QuantileActionBins(5, 128)
    empty.load_state_dict(bins.state_dict())
    assert torch.equal(empty.encode(_held_in(x)), bins.encode(_held_in(x)))
    # A bf16 cast of the enclosing model leaves the edges exact.
    wrapper = torch.nn.Sequential(bins).to(torch.bfloat16)
    assert wrapper[0].edges.dtype == torch.float32 and torch.equal(wrapper[0].edges, again.edges)
    with pytest.raises(ValueError):
        QuantileActionBins.from_json({"num_bins": 4, "action_dim": 1, "edges": [[0.0, 1.0, 0.5]]})
    with pytest.raises(ValueError):
        QuantileActionBins.fit(np.array([[np.inf], [0.0]], dtype=np.float32), 4)


# -- launcher/fit_action_bins.py ----------------------------------------------------------------------

REPO = __import__("pathlib").Path(__file__).resolve().parents[2]


def test_fit_bins_uses_only_valid_entries() -> None:
    from lavla.launcher.fit_action_bins import fit_bins

    x = _samples(500)
    valid = ~np.isnan(x)
    garbage = np.where(valid, x, 1e6).astype(np.float32)  # invalid entries hold junk, not NaN
    bins = fit_bins(garbage, valid, 16)
    ref = QuantileActionBins.fit(x, 16)
    assert torch.equal(bins.edges, ref.edges) and torch.equal(bins.centers, ref.centers)
    with pytest.raises(ValueError, match="no valid"):
        fit_bins(x, np.zeros_like(valid), 16)


def test_cli_samples_fits_and_writes_atomically(tmp_path, monkeypatch) -> None:
    import sys
    import types

    from lavla.launcher import fit_action_bins

    calls = []

    def sample_actions(data_cfg, max_samples, seed):  # the data service's signature
        calls.append((data_cfg.max_action_dim, max_samples, seed))
        rng = np.random.default_rng(seed)
        a = rng.normal(size=(max_samples, data_cfg.max_action_dim)).astype(np.float32)
        valid = np.ones_like(a, dtype=bool)
        valid[:, -1] = False  # a padded dim
        return a, valid

    # Stand-in for data_service.action_quantiles, so this test needs no dataset on disk.
    monkeypatch.setitem(sys.modules, "lavla.data_service.action_quantiles", types.SimpleNamespace(sample_actions=sample_actions))
    out = tmp_path / "sub" / "bins.json"
    config = str(REPO / "configs" / "quickstart.yaml")
    rc = fit_action_bins.main(["--config", config, "--num-bins", "32", "--max-samples", "300", "--out", str(out),
                               "--data.seed=5"])
    assert rc == 0 and calls == [(7, 300, 5)]
    data = json.loads(out.read_text())
    bins = QuantileActionBins.from_json(data)
    assert bins.num_bins == 32 and bins.action_dim == 7 and bins.num_valid.tolist() == [32] * 6 + [1]
    assert [p.name for p in out.parent.iterdir()] == ["bins.json"]  # no temporary file left behind
    # Defaults: 256 bins (the quickstart's model has no num_bins), 20000 samples, data.seed.
    assert fit_action_bins.main(["--config", config, "--out", str(out)]) == 0
    assert calls[-1] == (7, 20000, 0) and json.loads(out.read_text())["num_bins"] == 256
    # A config typo is a config error (exit 2), before any sampling.
    assert fit_action_bins.main(["--config", config, "--out", str(out), "--data.sed=1"]) == 2
    assert len(calls) == 2
