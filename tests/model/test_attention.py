import math

import numpy as np
import pytest
import torch
from soraplan.model.dit.attention import (
    SelfAttention,
    apply_rope,
    attend_in_sets,
    from_sequences,
    grid_positions,
    layer_kinds,
    padded_length,
    rope_3d,
    to_sequences,
)
from soraplan.model.dit.distance import average_distance, bfs_average_distance, set_ids

KINDS = ["full", "spatial", "temporal", "single_skip", "group_skip", "skip", "window"]
# Grids with N = 60 (not a multiple of 4, 9 or 16: padding) and N = 64 (no padding for k=2, 4).
GRIDS = [(3, 4, 5), (4, 4, 4)]


def dense_reference(q, k, v, kind, grid, sparse_k, valid=None):
    """Plain softmax attention over the whole sequence with the equivalent N x N mask."""
    ids = torch.from_numpy(set_ids(kind, grid, sparse_k))
    mask = ids[:, None] == ids[None, :]
    if valid is not None:
        mask = mask[None] & valid[:, None, :]
    else:
        mask = mask[None]
    scores = torch.einsum("bqhd,bkhd->bhqk", q, k) / math.sqrt(q.shape[-1])
    scores = scores.masked_fill(~mask[:, None], float("-inf"))
    return torch.einsum("bhqk,bkhd->bqhd", scores.softmax(-1), v)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sparse_k", [2, 3, 4])
def test_rearrange_then_inverse_is_identity(kind, grid, sparse_k):
    n = int(np.prod(grid))
    m = padded_length(n, kind, sparse_k)
    x = torch.randn(2, m, 3, 5)
    y = to_sequences(x, kind, grid, sparse_k)
    assert y.shape[0] * y.shape[1] == 2 * m
    torch.testing.assert_close(from_sequences(y, kind, grid, sparse_k, 2), x, rtol=0, atol=0)


@pytest.mark.parametrize("kind", ["single_skip", "group_skip", "window"])
def test_sequences_hold_the_defined_sets(kind):
    grid, k = (4, 4, 4), 4
    index = torch.arange(64).reshape(1, 64)
    seqs = to_sequences(index, kind, grid, k)
    ids = set_ids(kind, grid, k)
    for seq in seqs:
        assert len(set(ids[seq.numpy()].tolist())) == 1
    assert sorted(seqs.flatten().tolist()) == list(range(64))


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("grid", GRIDS)
@pytest.mark.parametrize("sparse_k", [2, 3, 4])
def test_each_kind_equals_dense_masked_reference(kind, grid, sparse_k):
    torch.manual_seed(0)
    n = int(np.prod(grid))
    q, k, v = (torch.randn(2, n, 2, 8, dtype=torch.float64) for _ in range(3))
    out = attend_in_sets(q, k, v, kind, grid, sparse_k)
    ref = dense_reference(q, k, v, kind, grid, sparse_k)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)
    # With a key-padding mask too (the last tokens of sample 1 are padding).
    valid = torch.ones(2, n, dtype=torch.bool)
    valid[1, n - 7:] = False
    out = attend_in_sets(q, k, v, kind, grid, sparse_k, valid)
    ref = dense_reference(q, k, v, kind, grid, sparse_k, valid)
    # Rows of padding queries are discarded by the model; only real rows must match.
    real = valid[:, :, None, None].expand_as(out)
    torch.testing.assert_close(out[real], ref[real], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("kind", KINDS)
def test_padding_never_leaks_into_real_tokens(kind):
    torch.manual_seed(0)
    grid, n = (3, 4, 5), 60
    attn = SelfAttention(16, 2, kind, sparse_k=3).double()
    rope = rope_3d(grid, 8)
    x = torch.randn(1, n, 16, dtype=torch.float64)
    valid = torch.ones(1, n, dtype=torch.bool)
    valid[0, 41:] = False
    out_a = attn(x, grid, rope, valid)
    x_b = x.clone()
    x_b[0, 41:] = 1e3 * torch.randn(n - 41, 16, dtype=torch.float64)
    out_b = attn(x_b, grid, rope, valid)
    torch.testing.assert_close(out_a[0, :41], out_b[0, :41], rtol=1e-10, atol=1e-10)
    assert torch.isfinite(out_a).all()


def test_internal_padding_is_not_attended():
    # N = 60 with k = 4 pads to 64 zeros: a query whose keys are all ones would see a lower
    # mean if padded zero keys/values leaked in.
    grid = (3, 4, 5)
    q = torch.randn(1, 60, 1, 4, dtype=torch.float64)
    k = torch.zeros(1, 60, 1, 4, dtype=torch.float64)
    v = torch.ones(1, 60, 1, 4, dtype=torch.float64)
    for kind in ("single_skip", "group_skip", "skip", "window"):
        out = attend_in_sets(q, k, v, kind, grid, 4)
        torch.testing.assert_close(out, torch.ones_like(out))


def test_spatial_then_temporal_equals_explicit_loops():
    torch.manual_seed(0)
    t, h, w, dim = 3, 2, 4, 8
    grid = (t, h, w)
    spatial = SelfAttention(dim, 2, "spatial").double()
    temporal = SelfAttention(dim, 2, "temporal").double()
    full_s = SelfAttention(dim, 2, "full").double()
    full_t = SelfAttention(dim, 2, "full").double()
    full_s.load_state_dict(spatial.state_dict())
    full_t.load_state_dict(temporal.state_dict())
    x = torch.randn(2, t * h * w, dim, dtype=torch.float64)
    out = temporal(spatial(x, grid), grid)

    frames = x.reshape(2, t, h * w, dim)
    y = torch.stack([full_s(frames[:, i], (1, h, w)) for i in range(t)], dim=1)
    y = y.reshape(2, t, h * w, dim)
    z = torch.stack([full_t(y[:, :, p], (t, 1, 1)) for p in range(h * w)], dim=2)
    torch.testing.assert_close(out, z.reshape(2, t * h * w, dim), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("pairing", ["adjacent", "halves"])
def test_rope_is_relative_and_norm_preserving(pairing):
    grid = (4, 3, 5)
    cos, sin = rope_3d(grid, 12, dtype=torch.float64)
    q = torch.randn(1, 1, 1, 12, dtype=torch.float64).expand(1, 60, 1, 12)
    k = torch.randn(1, 1, 1, 12, dtype=torch.float64).expand(1, 60, 1, 12)
    rq, rk = (apply_rope(x, cos, sin, pairing) for x in (q, k))
    torch.testing.assert_close(rq.norm(dim=-1), q.norm(dim=-1))
    # Same (dt, dh, dw) offset -> same score: tokens (0,0,0)->(1,1,1) and (2,1,3)->(3,2,4).
    def idx(t, h, w):
        return (t * 3 + h) * 5 + w
    s1 = (rq[0, idx(0, 0, 0), 0] * rk[0, idx(1, 1, 1), 0]).sum()
    s2 = (rq[0, idx(2, 1, 3), 0] * rk[0, idx(3, 2, 4), 0]).sum()
    torch.testing.assert_close(s1, s2)
    s3 = (rq[0, idx(0, 0, 0), 0] * rk[0, idx(0, 1, 1), 0]).sum()
    assert not torch.isclose(s1, s3)


def test_rope_halves_is_open_sora_plans_layout():
    # Their RoPE3D: head_dim split into t, h, w thirds of D channels; in each, channel j turns
    # with j + D/2 ("rotate_half") at frequency theta^(-2j/D), by the token's position on
    # that axis. Written out here from that description.
    grid, head_dim, theta = (3, 4, 5), 12, 10000.0
    d = head_dim // 3
    x = torch.randn(2, 60, 2, head_dim, dtype=torch.float64)
    pos = grid_positions(grid)
    thirds = []
    for axis, part in enumerate(x.chunk(3, dim=-1)):
        inv_freq = 1.0 / theta ** (torch.arange(0, d, 2).float() / d)
        freqs = (pos[:, axis].float()[:, None] * inv_freq).double()
        cos = torch.cat([freqs, freqs], -1).cos()[:, None]
        sin = torch.cat([freqs, freqs], -1).sin()[:, None]
        rotated = torch.cat([-part[..., d // 2:], part[..., : d // 2]], dim=-1)
        thirds.append(part * cos + rotated * sin)
    expected = torch.cat(thirds, dim=-1)
    got = apply_rope(x, *rope_3d(grid, head_dim, theta, dtype=torch.float64), "halves")
    assert (got - expected).abs().max() < 1e-14
    with pytest.raises(ValueError, match="divisible by 6"):
        SelfAttention(16, 2, rope_pairing="halves")


def test_layer_kinds_alternate_with_full_ends():
    kinds = layer_kinds("skiparse", 8, [0, 1, -2, -1])
    assert kinds == ["full", "full", "single_skip", "group_skip", "single_skip", "group_skip",
                     "full", "full"]
    assert layer_kinds("spatial_temporal", 4, [0]) == ["spatial", "temporal"] * 2


@pytest.mark.parametrize("mode", ["full", "spatial_temporal", "skip_window", "skiparse"])
@pytest.mark.parametrize("grid,k", [((2, 3, 4), 2), ((3, 4, 5), 3), ((2, 4, 4), 4),
                                    ((1, 5, 7), 2), ((3, 5, 5), 4), ((5, 1, 1), 2)])
def test_closed_form_distance_matches_bfs(mode, grid, k):
    if int(np.prod(grid)) < k * k and mode in ("skip_window", "skiparse"):
        return
    assert average_distance(mode, grid, k) == pytest.approx(bfs_average_distance(mode, grid, k),
                                                            abs=1e-12)


def test_distance_values_follow_known_limits():
    grid = (24, 32, 32)
    n = 24 * 32 * 32
    assert average_distance("full", grid) == pytest.approx(1 - 1 / n)
    assert average_distance("spatial_temporal", grid) == pytest.approx(2 - 1 / 24 - 1 / 1024)
    for k in (2, 4, 8):  # N is a multiple of k^2: the ideal formulas hold exactly
        assert average_distance("skiparse", grid, k) == pytest.approx(2 - 2 / k + 1 / k**2 - 1 / n)
        assert average_distance("skip_window", grid, k) == pytest.approx(2 - 1 / k - k / n)


def test_attention_distance_cli_prints_the_closed_form(capsys):
    import json

    from soraplan.model.dit.cli import main

    main(["attention-distance", "--shape", "2", "4", "4", "--k", "2", "4", "--json"])
    rows = json.loads(capsys.readouterr().out)["rows"]
    assert [r["k"] for r in rows] == [2, 4]
    assert rows[1]["skiparse"] == average_distance("skiparse", (2, 4, 4), 4)
    main(["attention-distance", "--shape", "2", "4", "4", "--k", "2"])
    table = capsys.readouterr().out
    assert "| k | full 3D | 2+1D | skip+window | skiparse |" in table


def test_no_mask_without_padding():
    from soraplan.model.dit.attention import set_key_mask

    cpu = torch.device("cpu")
    grid = (4, 4, 4)  # 64 tokens: a multiple of k^2 for k = 2, 4
    for kind in ("full", "spatial", "temporal", "single_skip", "group_skip"):
        assert set_key_mask(None, 64, padded_length(64, kind, 4), kind, grid, 4, 1, cpu) is None
    grid = (3, 4, 5)  # 60 tokens pad to 64 for k = 4: padded keys are masked
    mask = set_key_mask(None, 60, 64, "group_skip", grid, 4, 1, cpu)
    assert mask is not None and (~mask).sum() == 4
