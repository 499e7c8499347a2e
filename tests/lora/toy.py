"""A small GPT-2-shaped Flax LM for the LoRA core tests: fused c_attn with q/k/v column
blocks, c_proj, mlp c_fc/c_proj, all LoraDense. Independent of lora_jax.models, so the core
is tested on its own. Follows the models' apply contract: returns (logits, None)."""

import flax.linen as nn
import jax
import jax.numpy as jnp

from lora_jax.lora import LoraDense

MODULES = {
    "attn.c_attn": ("q", "k", "v"),
    "attn.c_proj": ("o",),
    "mlp.c_fc": ("up",),
    "mlp.c_proj": ("down",),
}


class ToyLM(nn.Module):
    vocab: int = 64
    d: int = 32
    layers: int = 2
    heads: int = 4
    param_dtype: object = jnp.float32
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(
        self,
        input_ids,
        attention_mask=None,
        positions=None,
        cache=None,
        deterministic=True,
        seq_lengths=None,
    ):
        emb = nn.Embed(self.vocab, self.d, name="wte", param_dtype=self.param_dtype)
        x = emb(input_ids).astype(jnp.float32)
        if seq_lengths is not None:  # right padding given by lengths (the train step's form)
            attention_mask = jnp.arange(input_ids.shape[1])[None] < seq_lengths[:, None]
        if attention_mask is None:
            attention_mask = jnp.ones_like(input_ids)
        mask = attention_mask[:, None, None, :].astype(bool)
        for i in range(self.layers):
            x = _Layer(self.d, self.heads, self.param_dtype, self.lora_dropout, name=f"h_{i}")(
                x, mask, deterministic
            )
        x = nn.LayerNorm(name="ln_f", param_dtype=self.param_dtype)(x)
        return emb.attend(x.astype(self.param_dtype)).astype(jnp.float32), None


class _Layer(nn.Module):
    """Scopes attn/mlp like GPT-2 (h_i/attn/c_attn, h_i/mlp/c_fc ...)."""

    d: int
    heads: int
    param_dtype: object
    lora_dropout: float

    @nn.compact
    def __call__(self, x, mask, deterministic):
        kw = dict(param_dtype=self.param_dtype, lora_dropout=self.lora_dropout)
        h = nn.LayerNorm(name="ln_1", param_dtype=self.param_dtype)(x)
        a = _Attn(self.d, self.heads, name="attn", **kw)(h, mask, deterministic)
        x = x + a
        h = nn.LayerNorm(name="ln_2", param_dtype=self.param_dtype)(x)
        return x + _Mlp(self.d, name="mlp", **kw)(h, deterministic)


class _Attn(nn.Module):
    d: int
    heads: int
    param_dtype: object = jnp.float32
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, h, mask, deterministic):
        kw = dict(param_dtype=self.param_dtype, lora_dropout=self.lora_dropout)
        qkv = LoraDense(3 * self.d, MODULES["attn.c_attn"], name="c_attn", **kw)(h, deterministic)
        q, k, v = jnp.split(qkv, 3, axis=-1)
        B, T, _ = h.shape
        shape = (B, T, self.heads, self.d // self.heads)
        att = jax.nn.dot_product_attention(
            q.reshape(shape), k.reshape(shape), v.reshape(shape), mask=mask, is_causal=True
        ).reshape(B, T, self.d)
        return LoraDense(self.d, MODULES["attn.c_proj"], name="c_proj", **kw)(att, deterministic)


class _Mlp(nn.Module):
    d: int
    param_dtype: object = jnp.float32
    lora_dropout: float = 0.0

    @nn.compact
    def __call__(self, h, deterministic):
        kw = dict(param_dtype=self.param_dtype, lora_dropout=self.lora_dropout)
        h = jax.nn.gelu(
            LoraDense(4 * self.d, MODULES["mlp.c_fc"], name="c_fc", **kw)(h, deterministic)
        )
        return LoraDense(self.d, MODULES["mlp.c_proj"], name="c_proj", **kw)(h, deterministic)


def make(vocab=64, d=32, layers=2, heads=4, seed=0, param_dtype=jnp.float32, lora_dropout=0.0):
    model = ToyLM(vocab, d, layers, heads, param_dtype, lora_dropout)
    ids = jnp.zeros((1, 8), jnp.int32)
    params = model.init(jax.random.PRNGKey(seed), ids)["params"]
    return model, params


def assert_close(actual, desired, rel: float) -> None:
    """``|actual - desired| <= rel · max|desired|`` elementwise: a tolerance scaled to the
    magnitude of what is compared (fp32 rounding grows with the values, not with 1)."""
    import numpy as np

    actual, desired = np.asarray(actual, np.float64), np.asarray(desired, np.float64)
    scale = float(np.abs(desired).max()) or 1.0
    err = float(np.abs(actual - desired).max())
    assert err <= rel * scale, f"max |diff| {err:.3g} > {rel:g} x max|desired| {scale:.3g}"
