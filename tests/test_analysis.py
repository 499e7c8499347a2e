"""Section 7 measurements (lora_jax/analysis.py) against closed-form answers. float64 numpy
throughout (no JAX matmuls, so no matmul-precision assumption)."""

from __future__ import annotations

import numpy as np
import pytest

from lora_jax.analysis import subspace as an


def _orth(d: int, k: int, seed: int) -> np.ndarray:
    return an.random_orthonormal(d, k, np.random.default_rng(seed))


def test_phi_equal_subspaces_is_one():
    u = _orth(40, 6, 0)
    rot = _orth(6, 6, 1)  # another basis of the same subspace
    assert an.phi(u, u, 6, 6) == pytest.approx(1.0, abs=1e-12)
    assert an.phi(u, u @ rot, 6, 6) == pytest.approx(1.0, abs=1e-12)
    # nested prefixes of the same basis: span(u[:, :3]) ⊂ span(u[:, :6])
    assert an.phi(u, u, 3, 6) == pytest.approx(1.0, abs=1e-12)


def test_phi_orthogonal_subspaces_is_zero():
    q = _orth(30, 10, 2)
    assert an.phi(q[:, :4], q[:, 4:], 4, 6) == pytest.approx(0.0, abs=1e-12)


def test_phi_partial_overlap_closed_form():
    # span{e1, e2} vs span{e1, (e2 + e3)/√2}: ‖UᵀV‖² = 1 + 1/2, / min(2, 2)
    e = np.eye(5)
    u = e[:, :2]
    v = np.stack([e[:, 0], (e[:, 1] + e[:, 2]) / np.sqrt(2)], 1)
    assert an.phi(u, v, 2, 2) == pytest.approx(0.75, abs=1e-12)
    assert an.phi(u, v, 1, 2) == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("i,j", [(2, 7), (5, 3), (4, 4)])
def test_phi_random_subspaces_average_max_ij_over_d(i, j):
    # E‖P_iᵀ Q_j‖²_F = tr(E[P_i P_iᵀ] Q_j Q_jᵀ) = tr((i/d)·I · Q_j Q_jᵀ) = i·j/d exactly,
    # so E φ = i·j / (d·min(i, j)) = max(i, j)/d.
    d, n = 24, 3000
    rng = np.random.default_rng(3)
    vals = [
        an.phi(an.random_orthonormal(d, i, rng), an.random_orthonormal(d, j, rng), i, j)
        for _ in range(n)
    ]
    expected = max(i, j) / d
    stderr = np.std(vals) / np.sqrt(n)
    assert abs(np.mean(vals) - expected) < 5 * stderr, (np.mean(vals), expected, stderr)


def test_phi_symmetric_and_grid_matches_pointwise():
    u, v = _orth(20, 5, 4), _orth(20, 7, 5)
    grid = an.phi_grid(u, v)
    assert grid.shape == (5, 7)
    for i in range(1, 6):
        for j in range(1, 8):
            assert an.phi(u, v, i, j) == pytest.approx(an.phi(v, u, j, i), abs=1e-12)
            assert grid[i - 1, j - 1] == pytest.approx(an.phi(u, v, i, j), abs=1e-12)
    np.testing.assert_allclose(an.phi_grid(v, u), grid.T, atol=1e-12)


def _adapter(d_in, d_out, r, seed, scale=2.0):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((d_in, r)) * np.linspace(2.0, 0.3, r)  # distinct singular values
    b = rng.standard_normal((r, d_out))
    return {"a": a, "b": b, "scale": np.float32(scale)}


def test_phi_invariant_to_factorisation():
    """ΔW = BA = (B·M)(M⁻¹·A): the same update, so φ between the two must be 1 at every i; and φ
    against a third adapter is unchanged by the refactorisation."""
    ad = _adapter(16, 12, 4, 6)
    m = np.random.default_rng(7).standard_normal((4, 4)) + 3 * np.eye(4)  # invertible
    # our layout: a [in, r] = Aᵀ, b [r, out] = Bᵀ  →  A·... becomes a·M⁻ᵀ... ; keep ΔW = a·b fixed
    refac = {"a": ad["a"] @ m, "b": np.linalg.inv(m) @ ad["b"], "scale": ad["scale"]}
    other = _adapter(16, 12, 3, 8)
    tree = lambda x: {"layers_0": {"self_attn": {"q_proj": {"q": x}}}}
    (b1,), (b2,), (b3,) = (an.delta_blocks(tree(x)) for x in (ad, refac, other))
    np.testing.assert_allclose(b1.delta, b2.delta, atol=1e-10)
    g12 = an.compare([b1], [b2], on="deltaW")[b1.key]
    np.testing.assert_allclose(np.diag(g12), 1.0, atol=1e-8)
    np.testing.assert_allclose(
        an.compare([b1], [b3], on="deltaW")[b1.key],
        an.compare([b2], [b3], on="deltaW")[b1.key],
        atol=1e-8,
    )
    # The factors' own singular directions are NOT invariant (ΔW's are, A's are not):
    ua = an.right_singular(ad["a"].T)
    ub = an.right_singular(refac["a"].T)
    assert an.phi(ua, ub, 1, 1) < 0.99
    assert an.compare([b1], [b2], on="A")[b1.key][0, 0] < 0.99
    # all r directions together span the same row space either way
    assert an.compare([b1], [b2], on="A")[b1.key][-1, -1] == pytest.approx(1.0, abs=1e-8)


def _phi_by_hand(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """φ(i, j) = ‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F / min(i, j) [P §7.2 Eq. 4], one (i, j) at a time."""
    out = np.zeros((u1.shape[1], u2.shape[1]))
    for i in range(1, u1.shape[1] + 1):
        for j in range(1, u2.shape[1] + 1):
            out[i - 1, j - 1] = np.linalg.norm(u1[:, :i].T @ u2[:, :j]) ** 2 / min(i, j)
    return out


def test_phi_on_a_is_the_papers_right_singular_vectors_of_a():
    """[P §7.2]: A ∈ ℝ^{r×d_in}, U_A its right-singular unitary matrix (top-i columns). Our
    adapters hold a = Aᵀ [d_in, r]; the by-hand SVD below is taken of A itself."""
    ad1, ad2 = _adapter(12, 9, 3, 30), _adapter(12, 9, 5, 31)
    tree = lambda x: {"layers_1": {"self_attn": {"k_proj": {"k": x}}}}
    (b1,), (b2,) = an.delta_blocks(tree(ad1)), an.delta_blocks(tree(ad2))
    u_a1 = np.linalg.svd(ad1["a"].T)[2].T[:, :3]  # A₁ = a₁ᵀ: [3, 12] -> right-singular [12, 3]
    u_a2 = np.linalg.svd(ad2["a"].T)[2].T[:, :5]
    got = an.compare([b1], [b2])[b1.key]  # the default is the paper's: on A
    np.testing.assert_allclose(got, _phi_by_hand(u_a1, u_a2), atol=1e-10)
    np.testing.assert_allclose(an.compare([b1], [b2], on="A")[b1.key], got, atol=0)
    # ... and it differs from φ on ΔW's right-singular vectors of the same adapters
    assert not np.allclose(an.compare([b1], [b2], on="deltaW")[b1.key], got, atol=1e-3)
    # output side on A: the left-singular vectors of B = bᵀ [9, r]
    u_b1 = np.linalg.svd(ad1["b"].T)[0][:, :3]
    u_b2 = np.linalg.svd(ad2["b"].T)[0][:, :5]
    np.testing.assert_allclose(
        an.compare([b1], [b2], side="left", on="A")[b1.key], _phi_by_hand(u_b1, u_b2), atol=1e-10
    )
    # on ΔW: its right-/left-singular vectors, from a full SVD of ΔW [d_out, d_in]
    d1, d2 = (2.0 * (x["a"] @ x["b"]).T for x in (ad1, ad2))
    (uw1, _, vt1), (uw2, _, vt2) = np.linalg.svd(d1), np.linalg.svd(d2)
    np.testing.assert_allclose(
        an.compare([b1], [b2], on="deltaW")[b1.key],
        _phi_by_hand(vt1[:3].T, vt2[:5].T),
        atol=1e-10,
    )
    np.testing.assert_allclose(
        an.compare([b1], [b2], side="left", on="deltaW")[b1.key],
        _phi_by_hand(uw1[:, :3], uw2[:, :5]),
        atol=1e-10,
    )


def test_phi_choice_names():
    assert [an.phi_tag(on, side) for on in an.PHI_ON for side in an.SIDES] == [
        "A", "B", "deltaW_right", "deltaW_left",
    ]  # fmt: skip
    assert "A's right-singular" in an.describe_phi("A", "right")
    assert "paper" in an.describe_phi("A", "right")
    assert "ΔW" in an.describe_phi("deltaW", "left") and "left" in an.describe_phi("deltaW", "left")
    with pytest.raises(ValueError, match="phi on must be one of"):
        an.compare([], [], on="B")


def test_delta_blocks_layout_and_gpt2_blocks():
    ad_q, ad_v = _adapter(8, 8, 2, 0), _adapter(8, 8, 3, 1, scale=0.5)
    tree = {"h_1": {"attn": {"c_attn": {"q": ad_q, "v": ad_v}}}}
    blocks = {b.key: b for b in an.delta_blocks(tree)}
    assert set(blocks) == {"h.1.attn.c_attn.q", "h.1.attn.c_attn.v"}
    bq = blocks["h.1.attn.c_attn.q"]
    assert (bq.layer, bq.module, bq.rank) == (1, "q", 2)
    np.testing.assert_allclose(bq.delta, 2.0 * (ad_q["a"] @ ad_q["b"]).T, atol=1e-12)
    params = {"h_1": {"attn": {"c_attn": {"kernel": np.arange(8 * 24.0).reshape(8, 24)}}}}
    w_v = an.base_block(params, blocks["h.1.attn.c_attn.v"], 3, 2)
    np.testing.assert_array_equal(w_v, params["h_1"]["attn"]["c_attn"]["kernel"][:, 16:].T)


def test_amplification_constructed_known_answer():
    """W = diag(10, 5, 1, 0.5, 0.1, 0...) in a rotated basis; ΔW = 3·u₃v₃ᵀ + 2·u₄v₄ᵀ uses W's
    3rd and 4th directions. Then ‖UᵀWV‖ for ΔW's top-2 = ‖diag(1, 0.5)‖ = √1.25; for W's top-2
    = √125; factor = ‖ΔW‖ / √1.25 = √13 / √1.25."""
    d_out, d_in = 12, 10
    u = _orth(d_out, d_out, 10)
    v = _orth(d_in, d_in, 11)
    s = np.array([10, 5, 1, 0.5, 0.1] + [0.0] * 5)
    w = u[:, :d_in] @ np.diag(s) @ v.T
    delta = 3 * np.outer(u[:, 2], v[:, 2]) + 2 * np.outer(u[:, 3], v[:, 3])
    out = an.amplification(w, delta, r=2)
    assert out["proj_delta"] == pytest.approx(np.sqrt(1.25), rel=1e-9)
    assert out["proj_w"] == pytest.approx(np.sqrt(125.0), rel=1e-9)
    assert out["delta_fro"] == pytest.approx(np.sqrt(13.0), rel=1e-9)
    assert out["w_fro"] == pytest.approx(np.linalg.norm(s), rel=1e-9)
    assert out["factor"] == pytest.approx(np.sqrt(13 / 1.25), rel=1e-9)
    # random directions: E‖UᵀWV‖² = ‖W‖²·r²/(d_out·d_in) for uniform U, V
    rng = np.random.default_rng(12)
    rand = [an.amplification(w, delta, 2, rng)["proj_random"] ** 2 for _ in range(2000)]
    expected = np.sum(s**2) * 4 / (d_out * d_in)
    assert np.mean(rand) == pytest.approx(expected, rel=0.1)


def test_effective_rank_and_module_stats():
    assert an.effective_rank(np.array([3.0, 0, 0])) == pytest.approx(1.0)
    assert an.effective_rank(np.ones(5)) == pytest.approx(5.0)
    assert an.effective_rank(np.zeros(3)) == 0.0
    ad = _adapter(10, 9, 4, 13)
    (blk,) = an.delta_blocks({"layers_2": {"mlp": {"up_proj": {"up": ad}}}})
    st = an.module_stats(blk)
    sv = np.linalg.svd(blk.delta, compute_uv=False)
    assert st["r"] == 4 and len(st["singular_values"]) == 4
    np.testing.assert_allclose(st["singular_values"], sv[:4], rtol=1e-10)
    assert st["delta_fro"] == pytest.approx(np.sqrt(np.sum(sv**2)), rel=1e-10)
    assert 1.0 < st["effective_rank"] < 4.0


def test_factor_svd_matches_svd_of_delta():
    ad = _adapter(20, 14, 5, 21, scale=1.5)
    (blk,) = an.delta_blocks({"layers_0": {"self_attn": {"v_proj": {"v": ad}}}})
    u, s, vt = np.linalg.svd(blk.delta, full_matrices=False)
    np.testing.assert_allclose(blk.s, s[:5], rtol=1e-10)
    np.testing.assert_allclose(blk.u @ np.diag(blk.s) @ blk.v.T, blk.delta, atol=1e-10)
    for k in range(5):  # same directions up to sign
        assert abs(blk.v[:, k] @ vt[k]) == pytest.approx(1.0, abs=1e-8)
        assert abs(blk.u[:, k] @ u[:, k]) == pytest.approx(1.0, abs=1e-8)


@pytest.mark.parametrize("extra", [{"init": "pissa"}, {"variant": "dora"},
                                   {"variant": "dora", "init": "olora"}])  # fmt: skip
def test_delta_blocks_per_variant_is_the_merged_change(extra):
    """ΔW of a PiSSA / DoRA / DoRA+OLoRA adapter = the merged kernel minus the base (float32
    JAX merge against the float64 analysis: 1e-5 of ‖W‖'s entries)."""
    import jax

    from lora_jax.lora import LoraConfig, init, merge

    rng = np.random.default_rng(0)
    kernel = rng.normal(size=(8, 24)).astype(np.float32)
    params = {"h_1": {"attn": {"c_attn": {"kernel": kernel}}}}
    modules = {"attn.c_attn": ("q", "k", "v")}
    tree, _ = init(jax.random.key(0), params, LoraConfig(r=2, targets="qv", **extra), modules)
    tree = jax.tree.map(np.array, tree)
    for blk in ("q", "v"):  # train as if: B and m move
        ad = tree["h_1"]["attn"]["c_attn"][blk]
        ad["b"] = ad["b"] + rng.normal(scale=0.1, size=ad["b"].shape).astype(np.float32)
        if "m" in ad:
            ad["m"] = ad["m"] * 1.1
    merged = np.asarray(merge(params, tree, modules)["h_1"]["attn"]["c_attn"]["kernel"])
    blocks = {b.key: b for b in an.delta_blocks(tree, base=(params, modules))}
    for i, blk in ((0, "q"), (2, "v")):
        want = (merged - kernel)[:, i * 8 : (i + 1) * 8].T
        got = blocks[f"h.1.attn.c_attn.{blk}"].delta
        np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(kernel).max())
    if "variant" in extra:
        with pytest.raises(ValueError, match="DoRA"):
            an.delta_blocks(tree)
