"""Why does a small rank suffice? The paper's Section 7 measurements on LoRA trees.

Conventions. Our kernels are ``[in, out]`` and an adapter block holds ``a: [in, r]``,
``b: [r, out]``, so ``ΔW = s·a·b: [in, out]`` (:func:`lora_jax.lora.delta`). The paper writes
``W: [d_out, d_in]`` (``h = W x``) and ``ΔW = B A`` with ``A: [r, d_in]``; our arrays are the
transposes. Everything here is stated in the paper's layout: "right-singular directions" are
directions of the *input* space (``d_in``), i.e. the left-singular vectors of our ``[in, out]``
arrays.

- :func:`phi` is the subspace similarity of [P §7.2, Eq. 4]
  ``φ(A₁, A₂, i, j) = ‖U₁^{i⊤} U₂^{j}‖²_F / min(i, j)`` between the top-i and top-j singular
  directions of two adapters. Which directions (:data:`PHI_ON`, ``on=`` of :func:`compare`,
  ``--phi-on`` of the CLI) is named in every output:

  - ``"A"`` (the default, the paper's): ``U_A``, the right-singular vectors of ``A: [r, d_in]``
    (input space, ordered by A's singular values); on the output side, the left-singular
    vectors of ``B: [d_out, r]`` (the paper notes the analysis can be done with B likewise).
  - ``"deltaW"``: the right- (input) and left- (output) singular vectors of ``ΔW = s·BA``.
    Both span A's row space / B's column space when the factors have full rank, but only ΔW's
    are invariant to re-factorisations ``(B·M, M⁻¹·A)`` of the same update, so ΔW's ordering (by
    how much the update uses a direction) is well defined and A's depends on how the update is
    split between A and B (A's singular values are not ΔW's).
- :func:`amplification` is [P §7.3, Table 7]: ``‖Uᵀ W V‖_F`` with U, V the top-r left/right
  singular vectors of ΔW, of W itself, or random orthonormal ones, and the amplification
  factor ``‖ΔW‖_F / ‖Uᵀ W V‖_F`` (ΔW's directions).
- :func:`module_stats`: ``‖ΔW‖_F``, the singular spectrum and the effective rank
  ``exp(H(σ/Σσ))`` (Roy & Vetterli 2007, the entropy effective rank) per layer × module; GPT-2's
  fused ``c_attn`` is analysed per column block (q, k, v), as adapted.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from lora_jax.errors import ConfigError
from lora_jax.lora.params import iter_adapters
from lora_jax.lora.targeting import module_id

_LAYER = re.compile(r"^(?:h|layers)_(\d+)$")


@dataclasses.dataclass(frozen=True)
class Block:
    """One adapted column block. ``key``: "layers.3.self_attn.q_proj.q"; ``delta``: ΔW in the
    paper's layout ``[d_out, d_in]`` (float64); ``rank``: the adapter's r."""

    key: str
    layer: int
    module: str  # the block's short name: q, k, v, o, gate, up, down
    path: tuple[str, ...]
    rank: int
    delta: np.ndarray
    u: np.ndarray  # [d_out, r] left-singular vectors of delta (descending σ)
    s: np.ndarray  # [r] singular values
    v: np.ndarray  # [d_in, r] right-singular vectors (input-space directions)
    a_dirs: np.ndarray  # [d_in, r] right-singular vectors of A: [r, d_in] (U_A, [P §7.2])
    b_dirs: np.ndarray  # [d_out, r] left-singular vectors of B: [d_out, r]


def factor_svd(a: np.ndarray, b: np.ndarray, scale: float) -> tuple[np.ndarray, ...]:
    """Thin SVD of ΔW = s·(a·b)ᵀ ``[d_out, d_in]`` from its factors ``a: [in, r]``,
    ``b: [r, out]`` in O((in + out)·r²): with a = Q_a R_a and bᵀ = Q_b R_b, ΔW = Q_b (s·R_b R_aᵀ)
    Q_aᵀ, so only the r×r core is decomposed. Returns (u [d_out, r], σ [r], v [d_in, r])."""
    qa, ra = np.linalg.qr(a)
    qb, rb = np.linalg.qr(b.T)
    uc, sc, vct = np.linalg.svd(scale * rb @ ra.T)
    return qb @ uc, sc, qa @ vct.T


def delta_blocks(lora: Mapping[str, Any], base: Any = None) -> list[Block]:
    """ΔW ``[d_out, d_in]`` (float64) for every adapter in a LoRA tree, per variant: LoRA
    ``s·(a·b)ᵀ``; PiSSA/OLoRA the change from the base, ``s·(a·b - a0·b0)ᵀ`` (rank ≤ 2r); DoRA
    ``(m/‖W + s·A'B'‖·(W + s·A'B') - W)ᵀ``, which is not low-rank (a column rescaling of W): its
    u, σ, v are the top-2r of its dense SVD and it needs ``base = (params, lora_modules)``.
    ``a_dirs`` is always from the trained A (the LoRA paper's U_A)."""
    from lora_jax.lora.params import blocks_of, kernel_block
    from lora_jax.lora.params import delta as variant_delta

    out = []
    for path, name, ad in iter_adapters(lora):
        a, b = np.asarray(ad["a"], np.float64), np.asarray(ad["b"], np.float64)
        if "a0" in ad:  # lora_jax.lora.params.factors, in float64
            a = np.concatenate([a, np.asarray(ad["a0"], np.float64)], axis=1)
            b = np.concatenate([b, -np.asarray(ad["b0"], np.float64)], axis=0)
        scale = float(np.asarray(ad["scale"]))
        layer = next((int(m[1]) for p in path if (m := _LAYER.match(p))), -1)
        key = f"{module_id(path)}.{name}"
        if "m" in ad:
            if base is None:
                raise ValueError(
                    f"{key} is a DoRA adapter: its ΔW needs base=(params, lora_modules)"
                )
            params, modules = base
            blocks = blocks_of(path, modules)
            w = kernel_block(params, path, blocks.index(name), len(blocks))
            delta_t = np.asarray(variant_delta(ad, w), np.float64).T
            uu, ss, vt = np.linalg.svd(delta_t, full_matrices=False)
            k = 2 * np.shape(ad["a"])[1]
            u, s, v = uu[:, :k], ss[:k], vt[:k].T
        else:
            u, s, v = factor_svd(a, b, scale)
            delta_t = scale * (a @ b).T
        a = np.asarray(ad["a"], np.float64)  # the trained factor (without PiSSA's a0)
        b = np.asarray(ad["b"], np.float64)
        delta = delta_t
        # A = aᵀ: its right-singular vectors are a's left ones; B = bᵀ: its left are b's right
        a_dirs = np.linalg.svd(a, full_matrices=False)[0]
        b_dirs = np.linalg.svd(b, full_matrices=False)[2].T
        out.append(Block(key, layer, name, path, a.shape[1], delta, u, s, v, a_dirs, b_dirs))
    return out


def base_block(params: Mapping[str, Any], block: Block, n_blocks: int, index: int) -> np.ndarray:
    """The frozen W of ``block`` in the paper's layout ``[d_out, d_in]`` (float64): the kernel's
    column block ``index`` of ``n_blocks`` (GPT-2's c_attn holds q, k, v side by side)."""
    node: Any = params
    for seg in block.path:
        node = node[seg]
    kernel = np.asarray(node["kernel"], np.float64)
    width = kernel.shape[1] // n_blocks
    return kernel[:, index * width : (index + 1) * width].T


def right_singular(m: np.ndarray, k: int | None = None) -> np.ndarray:
    """Top-k right-singular vectors of ``m: [d_out, d_in]`` as columns ``[d_in, k]``, in order of
    decreasing singular value (k defaults to the numerical rank's upper bound min(shape))."""
    _, _, vt = np.linalg.svd(m, full_matrices=False)
    return vt[: (k or vt.shape[0])].T


def phi(u1: np.ndarray, u2: np.ndarray, i: int, j: int) -> float:
    """[P §7.2, Eq. 4] ``‖U₁[:, :i]ᵀ U₂[:, :j]‖²_F / min(i, j)`` ∈ [0, 1]; ``u1: [d, ≥i]``,
    ``u2: [d, ≥j]`` with orthonormal columns."""
    if not (1 <= i <= u1.shape[1] and 1 <= j <= u2.shape[1]):
        raise ValueError(f"need 1 <= i <= {u1.shape[1]} and 1 <= j <= {u2.shape[1]}; got {i}, {j}")
    m = u1[:, :i].T @ u2[:, :j]
    return float(np.sum(m * m) / min(i, j))


def phi_grid(u1: np.ndarray, u2: np.ndarray) -> np.ndarray:
    """φ(i, j) for all i ≤ u1's columns, j ≤ u2's columns: ``[i_max, j_max]`` (row i-1, col j-1).
    Cumulative sums of the squared overlaps, so O(i·j) after one product."""
    sq = (u1.T @ u2) ** 2
    cum = sq.cumsum(0).cumsum(1)
    i = np.arange(1, u1.shape[1] + 1)[:, None]
    j = np.arange(1, u2.shape[1] + 1)[None, :]
    return cum / np.minimum(i, j)


def top_singular_pair(m: np.ndarray, r: int) -> tuple[np.ndarray, np.ndarray]:
    """Top-r left ``[d_out, r]`` and right ``[d_in, r]`` singular vectors of ``m``."""
    u, _, vt = np.linalg.svd(m, full_matrices=False)
    return u[:, :r], vt[:r].T


def projection_norm(w: np.ndarray, u: np.ndarray, v: np.ndarray) -> float:
    """``‖Uᵀ W V‖_F`` for ``w: [d_out, d_in]``, ``u: [d_out, r]``, ``v: [d_in, r]``."""
    return float(np.linalg.norm(u.T @ w @ v))


def random_orthonormal(d: int, r: int, rng: np.random.Generator) -> np.ndarray:
    """``[d, r]`` with orthonormal columns, uniformly distributed (QR of a Gaussian)."""
    q, rr = np.linalg.qr(rng.standard_normal((d, r)))
    return q * np.sign(np.diag(rr))


def amplification(
    w: np.ndarray,
    delta: np.ndarray,
    r: int,
    rng: np.random.Generator | None = None,
    delta_dirs: tuple[np.ndarray, np.ndarray] | None = None,
) -> dict[str, float]:
    """[P §7.3, Table 7] for ``w, delta: [d_out, d_in]`` and the adapter rank ``r``.

    Returns ``delta_fro`` ‖ΔW‖_F, ``w_fro`` ‖W‖_F, ``proj_delta`` / ``proj_w`` / ``proj_random``
    = ‖Uᵀ W V‖_F with U, V the top-r singular directions of ΔW / of W / random ones, and
    ``factor`` = ‖ΔW‖_F / proj_delta (the paper's amplification factor). ``delta_dirs``: ΔW's
    top-r (u, v) if already known (:class:`Block`), else from an SVD of ``delta``.
    """
    rng = rng or np.random.default_rng(0)
    r = min(r, *delta.shape)
    u_d, v_d = delta_dirs if delta_dirs is not None else top_singular_pair(delta, r)
    u_d, v_d = u_d[:, :r], v_d[:, :r]
    u_w, v_w = top_singular_pair(w, r)
    u_r = random_orthonormal(w.shape[0], r, rng)
    v_r = random_orthonormal(w.shape[1], r, rng)
    proj_delta = projection_norm(w, u_d, v_d)
    delta_fro = float(np.linalg.norm(delta))
    return {
        "r": r,
        "delta_fro": delta_fro,
        "w_fro": float(np.linalg.norm(w)),
        "proj_delta": proj_delta,
        "proj_w": projection_norm(w, u_w, v_w),
        "proj_random": projection_norm(w, u_r, v_r),
        "factor": delta_fro / proj_delta if proj_delta > 0 else float("inf"),
    }


def effective_rank(s: np.ndarray) -> float:
    """Entropy effective rank ``exp(-Σ p log p)``, ``p = σ / Σσ`` (Roy & Vetterli 2007); 0 for
    a zero matrix. Ranges from 1 (one direction) to the number of nonzero σ (flat spectrum)."""
    s = np.asarray(s, np.float64)
    total = s.sum()
    if total <= 0:
        return 0.0
    p = s[s > 0] / total
    return float(np.exp(-(p * np.log(p)).sum()))


def module_stats(block: Block) -> dict[str, Any]:
    """``‖ΔW‖_F``, the top-r singular values and the effective rank of one block's ΔW."""
    s = block.s
    return {
        "key": block.key,
        "layer": block.layer,
        "module": block.module,
        "r": block.rank,
        "delta_fro": float(np.linalg.norm(block.delta)),
        "effective_rank": effective_rank(s),
        "singular_values": s.tolist(),
    }


PHI_ON = ("A", "deltaW")  # what φ is computed on; "A" is the paper's [P §7.2]
SIDES = ("right", "left")  # input space (the paper's) | output space


def directions(block: Block, on: str = "A", side: str = "right") -> np.ndarray:
    """The block's singular directions φ is computed on, ``[d, r]`` by descending σ: ``on="A"``:
    A's right-singular vectors (``side="right"``) or B's left-singular vectors (``"left"``);
    ``on="deltaW"``: ΔW's right- or left-singular vectors."""
    _check(on, side)
    if on == "A":
        return block.a_dirs if side == "right" else block.b_dirs
    return block.v if side == "right" else block.u


def phi_tag(on: str = "A", side: str = "right") -> str:
    """Short name of a choice, for file names and columns: "A", "B", "deltaW_right",
    "deltaW_left"."""
    _check(on, side)
    if on == "A":
        return "A" if side == "right" else "B"
    return f"deltaW_{side}"


def describe_phi(on: str = "A", side: str = "right") -> str:
    """Words for a choice, for table headers and plot titles."""
    _check(on, side)
    if on == "A":
        if side == "right":
            return "A's right-singular vectors (U_A, input space; the paper's)"
        return "B's left-singular vectors (output space)"
    space = "input" if side == "right" else "output"
    return f"ΔW = s·BA's {side}-singular vectors ({space} space)"


def _check(on: str, side: str) -> None:
    if on not in PHI_ON:
        raise ValueError(f"phi on must be one of {PHI_ON} ('A': the paper's); got {on!r}")
    if side not in SIDES:
        raise ValueError(f"side must be 'right' (input space, the paper's) or 'left'; got {side!r}")


def compare(
    blocks1: list[Block], blocks2: list[Block], side: str = "right", on: str = "A"
) -> dict[str, np.ndarray]:
    """φ grids ``[r₁, r₂]`` between the singular directions (:func:`directions`: ``on="A"``, the
    paper's, A's right-singular vectors; ``on="deltaW"``, ΔW's) of the blocks two adapters share
    (matched by key), e.g. r=8 vs r=64 [P Fig. 3] or two seeds [P Fig. 4]. ``side="left"``: the
    output-space directions instead (B's or ΔW's left-singular vectors; B starts at zero, so
    after a short run they hold what training learned while A may still be near its random
    init)."""
    _check(on, side)
    by_key = {b.key: b for b in blocks2}
    shared = [b for b in blocks1 if b.key in by_key]
    if not shared:
        raise ConfigError(
            "the two adapters share no adapted module: compare runs with the same targets "
            f"(first has {[b.key for b in blocks1[:3]]}..., second {[b.key for b in blocks2[:3]]}...)"
        )
    out = {}
    for b1 in shared:
        out[b1.key] = phi_grid(directions(b1, on, side), directions(by_key[b1.key], on, side))
    return out
