"""Checkpoints and adapters never lose or mix state (lora_jax/checkpoint.py), table-driven:

- checkpoints: a broken latest step (truncated data, bit flips, missing item, broken meta)
  is skipped with its reason, moved aside, and the previous step restores bit for bit; a
  save that orbax would skip, ``ckpt_keep=0``, a new run in a used dir and a resume under a
  different config are errors naming the fix, and nothing on disk changes;
- adapters: the metadata saved beside the LoRA tree is checked against the model and config
  it is loaded into (r, targets, model), and a missing path is an error that creates nothing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from lora_jax.train.checkpoint import (
    AdapterMismatch,
    Checkpointer,
    CheckpointError,
    adapter_meta,
    diff_fingerprints,
    load_adapter,
    run_fingerprint,
)
from tests.train.app import compose, tiny_overrides


def _state(scale: float):
    lora = {"h_0": {"attn": {"q": {"a": jnp.arange(600.0).reshape(20, 30) * scale,
                                   "b": jnp.ones((30, 4)) * scale}}}}  # fmt: skip
    return lora, {"mu": jnp.full((3,), scale), "count": jnp.asarray(7, jnp.int32)}


def _files(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def _data_files(step_dir: Path) -> list[Path]:
    """The array data files of a step (ocdbt ``d/`` folders): what a restore must read."""
    files = [p for p in (step_dir / "state").rglob("*") if p.is_file() and p.parent.name == "d"]
    assert files, sorted(step_dir.rglob("*"))
    return files


def _truncate(step_dir: Path) -> None:
    for f in _data_files(step_dir):
        f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])


def _bitflip(step_dir: Path) -> None:
    for f in _data_files(step_dir):
        b = bytearray(f.read_bytes())
        for i in range(len(b) // 3, len(b) // 3 + 16):
            b[i] ^= 0xFF
        f.write_bytes(bytes(b))


CORRUPTIONS = {
    "truncated data file": _truncate,
    "bit flips": _bitflip,
    "missing item": lambda d: shutil.rmtree(d / "state"),
    "broken meta json": lambda d: (d / "meta" / "metadata").write_text("{broken"),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_broken_latest_step_falls_back_to_previous(kind, tmp_path, capsys):
    d = tmp_path / "checkpoints"
    ck = Checkpointer(d, keep=3, run_config={"seed": 0})
    ck.save(1, *_state(1.0))
    ck.save(2, *_state(2.0))
    ck.close()
    CORRUPTIONS[kind](d / "2")

    ck = Checkpointer(d, keep=3, run_config={"seed": 0})
    lora, opt, step, _ = ck.restore(*_state(0.0))
    assert step == 1
    want_lora, want_opt = _state(1.0)
    for got, want in zip(jax.tree.leaves((lora, opt)), jax.tree.leaves((want_lora, want_opt))):
        np.testing.assert_array_equal(np.asarray(got), np.asarray(want))
    out = capsys.readouterr().out
    assert "step 2" in out and "skipped" in out, out
    # The broken step is kept for inspection, out of the way: the next save works.
    assert (tmp_path / "checkpoints.skipped" / "2").is_dir()
    ck.save(2, *_state(3.0))
    assert ck.all_steps() == [1, 2]
    ck.close()


def test_no_step_restores_lists_every_reason(tmp_path):
    d = tmp_path / "checkpoints"
    ck = Checkpointer(d, keep=3)
    ck.save(1, *_state(1.0))
    ck.save(2, *_state(2.0))
    ck.close()
    _bitflip(d / "1")
    _truncate(d / "2")
    with pytest.raises(CheckpointError, match=r"(?s)no checkpoint.*restores.*step 2: .*step 1: "):
        Checkpointer(d, keep=3).restore(*_state(0.0))


def test_skipped_save_is_an_error_and_overwrites_nothing(tmp_path):
    """Another run's newer step in the dir: orbax's save returns False; that is an error."""
    d = tmp_path / "checkpoints"
    other = Checkpointer(d, keep=2)
    other.save(10, *_state(5.0))
    before = _files(d)
    ck = Checkpointer(d, keep=2)
    with pytest.raises(
        CheckpointError, match=r"step 4 was not written.*holds step 10.*new run dir"
    ):
        ck.save(4, *_state(1.0))
    assert _files(d) == before


def test_keep_must_be_at_least_one(tmp_path):
    with pytest.raises(ValueError, match=r"ckpt_keep=0: must be >= 1"):
        Checkpointer(tmp_path / "c", keep=0)


BASE = ["lora=qv", "lora.r=8", "seed=0", "trainer.batch_size=8"]
CHANGES = {  # override → the key the refusal must name
    "lora.alpha=32": "lora.alpha",
    "lora.r=4": "lora.r",
    "lora=q": "lora.targets",
    "trainer.batch_size=4": "trainer.batch_size",
    "seed=1": "seed",
    "trainer.data_seed=5": "trainer.data_seed",
    "optim.lr=0.5": "optim.lr",
    "model.source=/other/model": "model.source",
    "task.max_len=64": "task.max_len",
}


def _fingerprint(model_dir: Path, *extra: str) -> dict:
    from omegaconf import OmegaConf

    return run_fingerprint(
        OmegaConf.to_container(compose(tiny_overrides(model_dir, *BASE, *extra)), resolve=True)
    )


def test_resume_refuses_state_shaping_changes(tiny_e2e_gpt2_dir, tmp_path):
    d = tmp_path / "checkpoints"
    Checkpointer(d, keep=1, run_config=_fingerprint(tiny_e2e_gpt2_dir)).save(3, *_state(1.0))
    before = _files(d)
    # Cadence, logging and evaluation may change on resume.
    same = _fingerprint(tiny_e2e_gpt2_dir, "trainer.log_every=7", "trainer.ckpt_every=3",
                        "task.max_eval_items=2", "trainer.eval_before=false")  # fmt: skip
    Checkpointer(d, keep=1, run_config=same).check_resume(True)
    for override, key in CHANGES.items():
        now = _fingerprint(tiny_e2e_gpt2_dir, override)
        with pytest.raises(CheckpointError, match="another configuration") as ei:
            Checkpointer(d, keep=1, run_config=now).check_resume(True)
        assert f"\n  {key}" in str(ei.value), (override, str(ei.value))
    both = _fingerprint(tiny_e2e_gpt2_dir, "lora.alpha=32", "seed=3")
    msg = "\n".join(diff_fingerprints(_fingerprint(tiny_e2e_gpt2_dir), both))
    assert "lora.alpha: checkpoint 8.0, now 32.0" in msg and "seed: checkpoint 0, now 3" in msg
    # A new run (resume=false) in this dir is refused outright.
    with pytest.raises(
        CheckpointError, match=r"already holds checkpoints \(steps \[3\]\).*trainer\.resume=true"
    ):
        Checkpointer(d, keep=1, run_config=same).check_resume(False)
    assert _files(d) == before


# ---- adapters --------------------------------------------------------------------------


def _adapter(model_dir: Path, **lora):
    """(lora tree, adapter_meta) of the tiny GPT-2 under a LoRA config."""
    from lora_jax.lora import LoraConfig
    from lora_jax.lora import init as lora_init
    from lora_jax.models.pretrained import load_model
    from lora_jax.models.registry import lora_modules

    lm = load_model(str(model_dir))
    cfg = {"r": 8, "targets": "qv"} | lora
    tree, targets = lora_init(
        jax.random.PRNGKey(0), lm.params, LoraConfig.from_dict(cfg), lora_modules(lm.config)
    )
    return tree, adapter_meta(lm.config, cfg, targets)


@pytest.fixture(scope="module")
def saved_adapter(tiny_e2e_gpt2_dir, tmp_path_factory):
    d = tmp_path_factory.mktemp("adapter_run") / "checkpoints"
    tree, meta = _adapter(tiny_e2e_gpt2_dir)
    tree = jax.tree.map(lambda x: x + 0.5, tree)  # not the init: a real load is visible
    ck = Checkpointer(d, keep=1, adapter=meta)
    ck.save(5, tree, {"mu": jnp.zeros(2)})
    ck.close()
    return d, tree


ADAPTER_CASES = {  # LoRA config it is loaded under → what the error must say
    "r=4": ({"r": 4}, r"r differs on 4 block\(s\) \(adapter 8, config 4\)"),
    "targets q only": (
        {"targets": "q"},
        r"blocks the adapter has but the config does not adapt \(2\)",
    ),
    "targets qkv": (
        {"targets": ["q", "k", "v"]},
        r"blocks the config adapts but the adapter lacks \(2\)",
    ),
    "alpha 16": ({"alpha": 16}, r"alpha differs .*adapter 8, config 16"),
}


@pytest.mark.parametrize("case", list(ADAPTER_CASES))
def test_adapter_mismatch_names_the_difference(case, saved_adapter, tiny_e2e_gpt2_dir):
    d, _ = saved_adapter
    lora_cfg, pattern = ADAPTER_CASES[case]
    template, expected = _adapter(tiny_e2e_gpt2_dir, **lora_cfg)
    with pytest.raises(AdapterMismatch, match=pattern) as ei:
        load_adapter(d, template, expected=expected)
    assert "lora.r=8" in str(ei.value) and "lora.targets='qv'" in str(ei.value)


def test_adapter_of_another_model_is_refused(saved_adapter, tmp_path):
    from tests.conftest import write_tiny_gpt2

    other = write_tiny_gpt2(tmp_path / "other", vocab_size=300)
    template, expected = _adapter(other)
    with pytest.raises(AdapterMismatch, match=r"model vocab_size: adapter 512, this model 300"):
        load_adapter(saved_adapter[0], template, expected=expected)


def test_matching_adapter_loads_from_run_dir_or_checkpoints(saved_adapter, tiny_e2e_gpt2_dir):
    d, want = saved_adapter
    template, expected = _adapter(tiny_e2e_gpt2_dir)
    for path in (d, d.parent):
        got, meta = load_adapter(path, template, expected=expected)
        assert meta["lora"]["r"] == 8 and meta["lora_jax_version"]
        for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
            np.testing.assert_array_equal(np.asarray(g), np.asarray(w))


@pytest.mark.parametrize("where", ["missing path", "empty dir"])
def test_adapter_path_without_checkpoint_creates_nothing(where, tmp_path, tiny_e2e_gpt2_dir):
    path = tmp_path / "nope" / "checkpoints"
    if where == "empty dir":
        path.mkdir(parents=True)
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    template, expected = _adapter(tiny_e2e_gpt2_dir)
    with pytest.raises(FileNotFoundError, match=r"adapter=.*nope"):
        load_adapter(path, template, expected=expected)
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
