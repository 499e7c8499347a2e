"""Fixtures shared across test folders.

``tiny_e2e_gpt2_dir``: a tiny random GPT-2 folder in transformers' on-disk format (config.json
and tokenizer files written by transformers' ``save_pretrained``, weights as
``model.safetensors`` with GPT2LMHeadModel's tensor names, tied head), with a byte-level BPE
tokenizer trained on the synthetic E2E sample so that an E2E example is ~60 tokens. It needs
no torch, so the training-app tests run without it. (tests/models/conftest.py has the
torch-written parity fixtures.)
"""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

# The fp32 numeric tests (parity with transformers, merged == unmerged, hand-computed formulas)
# assume true float32 matmuls. JAX's default precision computes float32 matmuls with TF32 on
# recent NVIDIA GPUs and with bfloat16 passes on TPU, which is ~1e-3 relative, not ~1e-7; on CPU
# "highest" is what runs anyway. Tolerances are then scaled to the magnitude compared.
jax.config.update("jax_default_matmul_precision", "highest")

# One persistent XLA compilation cache per test session, for the app subprocesses only: the
# kill/resume chains, sweeps and multi-process runs recompile the same tiny-model programs in
# new processes (tests/train/test_resume.py 64 s -> 49 s). Set after this process imported jax,
# which read its configuration then: here, programs that bake in the 135M-parameter SmolLM2
# weights would be hashed and written whole (400 MB entries; the suite ran slower with it).
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    _cache = tempfile.mkdtemp(prefix="lora-jax-test-xla-cache-")
    os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)

TINY_GPT2 = dict(n_embd=32, n_layer=2, n_head=4, n_positions=256)


def _e2e_tokenizer(corpus: list[str], vocab_size: int):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=["<|endoftext|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator(corpus, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, eos_token="<|endoftext|>", bos_token="<|endoftext|>"
    )


def write_tiny_gpt2(out: Path, seed: int = 0, vocab_size: int = 512) -> Path:
    """A tiny random GPT-2 (``TINY_GPT2``; HF's init N(0, 0.02), LayerNorm 1/0, except the
    tied embedding N(0, 0.3) so that the head's logits span a range training can use) + tokenizer.

    Tensors (GPT-2 Conv1D layout ``[in, out]``): wte ``[V, D]``, wpe ``[P, D]``, per layer
    ln_1/ln_2 ``[D]``, attn.c_attn ``[D, 3D]``, attn.c_proj ``[D, D]``, mlp.c_fc ``[D, 4D]``,
    mlp.c_proj ``[4D, D]``; ln_f ``[D]``."""
    import csv

    from safetensors.numpy import save_file
    from transformers import GPT2Config

    from lora_jax.tasks.sample import write_e2e_sample

    out.mkdir(parents=True, exist_ok=True)
    train_csv, test_csv = write_e2e_sample(out / "_corpus")
    corpus = [
        " ".join(row)
        for p in (train_csv, test_csv)
        for row in csv.reader(p.read_text().splitlines())
    ]
    tok = _e2e_tokenizer(corpus, vocab_size)
    eos = tok.convert_tokens_to_ids("<|endoftext|>")
    v = len(tok)
    d, n_layer, n_pos = TINY_GPT2["n_embd"], TINY_GPT2["n_layer"], TINY_GPT2["n_positions"]
    GPT2Config(vocab_size=v, bos_token_id=eos, eos_token_id=eos, **TINY_GPT2).save_pretrained(out)
    tok.save_pretrained(out)

    rng = np.random.default_rng(seed)
    normal = lambda *shape: (0.02 * rng.standard_normal(shape)).astype(np.float32)
    t = {"transformer.wte.weight": 15.0 * normal(v, d), "transformer.wpe.weight": normal(n_pos, d)}
    for i in range(n_layer):
        h = f"transformer.h.{i}."
        for ln in ("ln_1", "ln_2"):
            t[h + ln + ".weight"] = np.ones(d, np.float32)
            t[h + ln + ".bias"] = np.zeros(d, np.float32)
        for name, shape in (("attn.c_attn", (d, 3 * d)), ("attn.c_proj", (d, d)),
                            ("mlp.c_fc", (d, 4 * d)), ("mlp.c_proj", (4 * d, d))):  # fmt: skip
            t[h + name + ".weight"] = normal(*shape)
            t[h + name + ".bias"] = np.zeros(shape[1], np.float32)
    t["transformer.ln_f.weight"] = np.ones(d, np.float32)
    t["transformer.ln_f.bias"] = np.zeros(d, np.float32)
    save_file(t, str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


@pytest.fixture(scope="session")
def tiny_e2e_gpt2_dir(tmp_path_factory) -> Path:
    """Session-scoped tiny GPT-2 folder (treat as read-only)."""
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny_e2e_gpt2"))


# CI (.ci/run sets LORA_JAX_CI=1): a test that would skip because its reference library, tool
# or data is missing fails instead, so a parity check never silently stops checking. Only
# the GPU-only tests may skip there.
@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if os.environ.get("LORA_JAX_CI") == "1" and rep.skipped and "gpu" not in item.keywords:
        reason = rep.longrepr[-1] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
        rep.outcome = "failed"
        rep.longrepr = (f"skipped in CI ({reason}): CI must have every reference library, "
                        "tool and data file the tests compare against")  # fmt: skip


# Under pytest-xdist (make test: 2 workers, whole files per worker) a long file that starts last
# leaves the other worker idle at the end. Files holding real-model (slow) tests and the files
# that took longest in the 2026-12-05 clean-clone CI run (subprocess training runs) go first;
# the order is otherwise the collection order (a stable sort), files stay whole.
LONG_FILES = {
    "tests/sharding/test_spawn.py", "tests/test_step_train_levers.py",
    "tests/train/test_packing_run.py", "tests/sharding/test_multiprocess.py",
    "tests/train/test_resume.py", "tests/sweeps/test_sweep.py", "tests/test_hostmem.py",
    "tests/packed/test_preemption.py", "tests/packed/test_launcher.py",
}  # fmt: skip


def pytest_collection_modifyitems(config, items):
    root = Path(str(config.rootpath))
    slow = {item.path for item in items if item.get_closest_marker("slow")}

    def first(item) -> bool:
        rel = item.path.relative_to(root).as_posix() if item.path.is_relative_to(root) else ""
        return item.path in slow or rel in LONG_FILES

    items.sort(key=lambda item: not first(item))
