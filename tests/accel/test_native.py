"""The compiled kernels (decode and causal attention, small GEMM, step ops) against torch."""

import pytest
import torch

from debate_lightning.accel import native



def _library():
    """The kernels; where they cannot run (no AVX2 or no compiler), the contract is that callers
    get None and keep their torch path, which is what the test then checks instead."""
    lib = native.library()
    assert (lib is None) == (native.disabled_reason() is not None)
    return lib


def _reference(q, keys, values, start, width, shared, group, shared_len):
    """softmax(q k^T / sqrt(d)) v per row and query head, over [shared prefix ; own columns]."""
    batch, kv, g, d = q.shape
    out = torch.empty_like(q)
    for b in range(batch):
        k, v = keys[b, :, start[b] : width], values[b, :, start[b] : width]
        if shared is not None and group[b] >= 0:
            n = shared_len[group[b]]
            k = torch.cat([shared[0][group[b], :, :n], k], 1)
            v = torch.cat([shared[1][group[b], :, :n], v], 1)
        weights = torch.softmax(q[b] @ k.transpose(-1, -2) / d**0.5, -1)  # (kv, g, L)
        out[b] = weights @ v
    return out


@pytest.mark.parametrize(("g", "d"), [(1, 64), (3, 64), (4, 128), (7, 64)])
@pytest.mark.parametrize("with_shared", [False, True])
def test_kernel_matches_torch(g, d, with_shared):
    torch.manual_seed(g * d)
    batch, kv, total, width = 5, 2, 40, 33
    q = torch.randn(batch, kv, g, d)
    keys, values = torch.randn(batch, kv, total, d), torch.randn(batch, kv, total, d)
    start = torch.tensor([0, 5, 17, 32, 9])  # row 3 has a single own column
    shared = group = shared_len = None
    if with_shared:
        shared = [(torch.randn(3, kv, 21, d), torch.randn(3, kv, 21, d))]
        group = torch.tensor([0, 2, 0, -1, 1])  # row 3 shares nothing
        shared_len = torch.tensor([21, 4, 13])
    if (lib := _library()) is None:
        return
    kernel = native.DecodeAttention(lib, batch, kv, g, d, start, total, shared, group, shared_len)
    got = kernel(0, q, keys, values, width)
    want = _reference(q, keys, values, start, width, None if shared is None else shared[0], group, shared_len)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    # columns before a row's start and at or after width are never read
    keys[:, :, width:] = float("nan")
    for b in range(batch):
        keys[b, :, : start[b]] = float("nan")
        values[b, :, : start[b]] = float("nan")
    torch.testing.assert_close(kernel(0, q, keys, values, width), want, rtol=1e-5, atol=1e-5)


def _causal_reference(q, k, v, key_mask):
    """Lower-right causal SDPA with the key mask, written out: (B, L, H, d); rows that see no
    key are zeros."""
    batch, heads, length, d = q.shape
    total, g = k.shape[2], heads // k.shape[1]
    k, v = k.repeat_interleave(g, 1), v.repeat_interleave(g, 1)
    allowed = torch.ones(length, total, dtype=torch.bool).tril(total - length)[None, None]
    if key_mask is not None:
        allowed = allowed & key_mask[:, None, None, :]
    scores = (q @ k.transpose(-1, -2) / d**0.5).masked_fill(~allowed, float("-inf"))
    weights = torch.softmax(scores, -1).nan_to_num(0.0)
    return (weights @ v).transpose(1, 2)


@pytest.mark.parametrize(
    ("batch", "heads", "kv", "length", "total", "d"),
    [(1, 9, 3, 150, 170, 64), (1, 9, 3, 7, 7, 64), (2, 4, 4, 33, 100, 32), (3, 9, 3, 65, 65, 64),
     (1, 14, 2, 20, 90, 16), (2, 6, 3, 1, 64, 64), (2, 9, 3, 129, 300, 128)],
)
@pytest.mark.parametrize("padded", [False, True])
def test_causal_attention_matches_masked_softmax(batch, heads, kv, length, total, d, padded):
    """Lower-right alignment, grouped heads (1 to 7 per kv head: tiles of 6 rows split a group),
    key blocks past 64 and tails, a strided query (the (B, L, H, d) projection transposed), key
    masks with left padding and gaps, and a query that sees no key (zeros, not NaN)."""
    torch.manual_seed(batch * 1000 + length + total + d)
    q = torch.randn(batch, length, heads, d).transpose(1, 2)
    k, v = torch.randn(batch, kv, total, d), torch.randn(batch, kv, total, d)
    key_mask = None
    if padded:
        key_mask = torch.rand(batch, total) > 0.2
        key_mask[:, : total // 5] = False  # left padding: with length == total, early queries see nothing
        key_mask[:, -1] = True
    if _library() is None:
        assert not native.causal_attention_supports(q, k)
        return
    got = native.causal_attention(q, k, v, key_mask)
    assert got.shape == (batch, length, heads, d) and got.is_contiguous()
    torch.testing.assert_close(got, _causal_reference(q, k, v, key_mask), rtol=1e-5, atol=1e-5)
    scaled = native.causal_attention(q, k, v, key_mask, scale=0.5 / d**0.5)
    torch.testing.assert_close(scaled, _causal_reference(q * 0.5, k, v, key_mask), rtol=1e-5, atol=1e-5)


def test_causal_attention_refuses_what_it_cannot_take():
    if _library() is None:
        return
    q, k = torch.randn(1, 4, 5, 64), torch.randn(1, 2, 9, 64)
    assert native.causal_attention_supports(q, k)
    for bad_q, bad_k in [(q.double(), k.double()), (q[..., :24], k[..., :24]), (torch.randn(1, 3, 5, 64), k),
                         (torch.randn(1, 4, 10, 64), k)]:
        assert not native.causal_attention_supports(bad_q, bad_k)
        with pytest.raises(ValueError, match="causal_attention cannot take"):
            native.causal_attention(bad_q, bad_k, bad_k)
    with pytest.raises(ValueError, match="key mask"):
        native.causal_attention(q, k, k, torch.ones(1, 8, dtype=torch.bool))


@pytest.mark.parametrize("rows", [1, 5, 8, 9, 16, 17, 24, 25, 40])
@pytest.mark.parametrize(("n", "k", "with_bias"), [(40, 200, True), (960, 576, False), (17, 129, False), (6, 7, True)])
def test_small_linear_matches_f_linear(rows, n, k, with_bias):
    """Rows in 8- and 16-lane groups with every kind of remainder, output widths off the 6-column
    blocks (and an odd block count, for the 8-lane path's block pairs), odd k."""
    if (lib := _library()) is None:
        return
    torch.manual_seed(rows + n + k)
    weight, x = torch.randn(n, k), torch.randn(rows, k)
    bias = torch.randn(n) if with_bias else None
    linear = native.SmallLinear(lib, weight, bias)
    torch.testing.assert_close(linear(x), torch.nn.functional.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(linear(x[:, :].t().contiguous().t()), torch.nn.functional.linear(x, weight, bias), rtol=1e-4, atol=1e-4)
    with pytest.raises(ValueError, match=f"SmallLinear\\({k} -> {n}\\)"):
        linear(torch.randn(rows, k + 1))
    with pytest.raises(ValueError, match="fp32 CPU weight"):
        native.SmallLinear(lib, weight.double())


def test_unsupported_shapes_and_buffers_are_refused():
    if (lib := _library()) is None:
        return
    with pytest.raises(ValueError, match="head_dim 48"):
        native.DecodeAttention(lib, 2, 1, 3, 48, torch.zeros(2, dtype=torch.long), 8)
    kernel = native.DecodeAttention(lib, 2, 1, 3, 64, torch.zeros(2, dtype=torch.long), 8)
    q, keys = torch.randn(2, 1, 3, 64), torch.randn(2, 1, 8, 64)
    with pytest.raises(ValueError, match="T >= width"):
        kernel(0, q, keys, keys, 9)
    with pytest.raises(ValueError, match="contiguous"):
        kernel(0, q, keys.transpose(2, 3).contiguous().transpose(2, 3), keys, 4)
    with pytest.raises(ValueError, match="group"):
        native.DecodeAttention(lib, 2, 1, 3, 64, torch.zeros(2, dtype=torch.long), 8, [(keys, keys)])


def test_build_is_cached_per_source_and_failures_name_the_compiler(tmp_path, monkeypatch):
    if native._compiler() is None or not {"avx2", "fma"} <= native._cpu()[1]:
        with pytest.raises(RuntimeError):  # no compiler, or the intrinsics do not compile
            native.build(tmp_path)
        return
    first = native.build(tmp_path)
    stamp = first.stat().st_mtime_ns
    assert native.build(tmp_path) == first and first.stat().st_mtime_ns == stamp  # not rebuilt
    assert [p.name for p in tmp_path.iterdir()] == [first.name]  # no temporary files left
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.setattr(native, "SOURCES", (broken,))
    with pytest.raises(RuntimeError, match="broken.c"):
        native.build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([first.name, "broken.c"])


def test_compiler_from_cc_with_flags_and_a_missing_one(tmp_path, monkeypatch):
    monkeypatch.setenv("CC", "/nonexistent/cc -O2")
    assert native._compiler() == ["/nonexistent/cc", "-O2"]
    with pytest.raises(RuntimeError, match="cannot run the C compiler /nonexistent/cc -O2"):
        native.build(tmp_path)


def test_switch_and_missing_compiler_are_reported(monkeypatch):
    monkeypatch.setenv("DEBATE_LIGHTNING_NATIVE", "0")
    assert "DEBATE_LIGHTNING_NATIVE" in native.disabled_reason()
    monkeypatch.delenv("DEBATE_LIGHTNING_NATIVE")
    monkeypatch.setattr(native, "_compiler", lambda: None)
    assert "compiler" in native.disabled_reason()


def test_step_ops_match_torch():
    if (lib := _library()) is None:
        return
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    ops = native.StepOps(lib)
    torch.manual_seed(0)
    x, weight = torch.randn(5, 96), torch.randn(96)
    torch.testing.assert_close(ops.rms_norm(x, weight, 1e-5), torch.nn.functional.rms_norm(x, (96,), weight, 1e-5))
    gate_up = torch.randn(5, 2 * 40) * 4
    gate_up[0, :3] = torch.tensor([-200.0, 200.0, 0.0])  # exp overflow on either side
    want = torch.nn.functional.silu(gate_up[:, :40]) * gate_up[:, 40:]
    torch.testing.assert_close(ops.silu_mul(gate_up), want)
    # rotary embedding of q and k, k and v written into their cache column
    batch, heads, kv, d, total, column = 3, 6, 2, 16, 9, 4
    qkv = torch.randn(batch, (heads + 2 * kv) * d)
    angles = torch.rand(batch, d // 2) * 6
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    keys, values = torch.zeros(batch, kv, total, d), torch.zeros(batch, kv, total, d)
    q = ops.rope_store(qkv, cos, sin, keys, values, column, heads)
    q_ref, k_ref = apply_rotary_pos_emb(
        qkv[:, : heads * d].view(batch, heads, 1, d), qkv[:, heads * d : (heads + kv) * d].view(batch, kv, 1, d),
        cos[:, None], sin[:, None],
    )
    torch.testing.assert_close(q, q_ref.view(batch, heads, d))
    torch.testing.assert_close(keys[:, :, column], k_ref.view(batch, kv, d))
    torch.testing.assert_close(values[:, :, column], qkv[:, (heads + kv) * d :].view(batch, kv, d))
    assert keys[:, :, column + 1 :].abs().sum() == 0 and values[:, :, :column].abs().sum() == 0  # nothing else written
    with pytest.raises(ValueError, match="column 9"):
        ops.rope_store(qkv, cos, sin, keys, values, total, heads)
    with pytest.raises(ValueError, match="do not fit 5 heads"):
        ops.rope_store(qkv, cos, sin, keys, values, column, 5)
    with pytest.raises(ValueError, match="odd width"):
        ops.silu_mul(torch.randn(2, 7))
    with pytest.raises(ValueError, match="fp32 CPU"):
        ops.rms_norm(x.double(), weight, 1e-5)


def test_native_sampling_follows_the_distribution():
    """Frequencies over 20000 draws match softmax(logits / T); zero-probability and banned tokens
    (EOS before the minimum length) are never drawn, even a banned token that is the most likely."""
    if (lib := _library()) is None:
        return
    ops = native.StepOps(lib)
    torch.manual_seed(3)
    probs = torch.tensor([0.0, 0.6, 0.0, 0.3, 0.1, 0.0])
    logits = probs.log().clamp(min=-1e30).repeat(20000, 1)
    for temperature in (1.0, 0.5):
        want = probs ** (1 / temperature) / (probs ** (1 / temperature)).sum()
        freq = torch.bincount(ops.sample(logits, temperature), minlength=6).float() / len(logits)
        torch.testing.assert_close(freq, want, atol=0.012, rtol=0)
        assert freq[[0, 2, 5]].sum() == 0
    boosted = logits.clone()
    boosted[:, 5] = 10.0  # banned and far above the rest
    freq = torch.bincount(ops.sample(boosted, 0.7, banned=torch.tensor([5])), minlength=6).float() / len(logits)
    want = probs ** (1 / 0.7) / (probs ** (1 / 0.7)).sum()
    torch.testing.assert_close(freq, want, atol=0.012, rtol=0)
    # the same seed, the same tokens
    torch.manual_seed(5)
    first = ops.sample(logits[:50], 0.7)
    torch.manual_seed(5)
    assert torch.equal(ops.sample(logits[:50], 0.7), first)
    with pytest.raises(ValueError, match="temperature > 0"):
        ops.sample(logits, 0.0)
    with pytest.raises(ValueError, match="no token with probability"):
        ops.sample(torch.zeros(2, 3), 1.0, banned=torch.tensor([0, 1, 2]))


def test_kernels_go_to_a_temporary_directory_when_the_cache_is_not_writable(tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    monkeypatch.setattr(native, "cache_root", lambda: blocker / "cache")
    directory = native._kernel_dir()
    assert directory.name.startswith("debate_lightning-kernels-") and not str(directory).startswith(str(blocker))
    monkeypatch.setattr(native, "cache_root", lambda: tmp_path / "cache")
    assert native._kernel_dir() == tmp_path / "cache" / "kernels"
