"""Safetensors folders (single file and shards), refusal of pickles, error messages for partial
checkpoints, GPT2Model key normalisation, and Hub ids through an offline HF cache; every state
dict is compared with transformers' own ``model.state_dict()``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lora_jax.models.load import load_checkpoint

pytestmark = pytest.mark.torch


def _reference_state(folder: Path) -> dict[str, np.ndarray]:
    """transformers' state dict, a tied lm_head (an alias of the embedding) removed."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(folder)
    ref = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    if model.config.tie_word_embeddings:
        emb = model.get_input_embeddings().weight.detach().numpy()
        np.testing.assert_array_equal(ref.pop("lm_head.weight"), emb)
    return ref


def _assert_equal_states(ours: dict, ref: dict) -> None:
    assert sorted(ours) == sorted(ref)
    for k in ref:
        assert ours[k].shape == ref[k].shape, k
        np.testing.assert_array_equal(ours[k], ref[k], err_msg=k)


@pytest.mark.parametrize("kind", ["gpt2", "llama_gqa", "llama_tied", "qwen2"])
def test_folder_equals_transformers_state_dict(make_tiny_hf_model, kind):
    folder = make_tiny_hf_model(kind)
    config, state, tok = load_checkpoint(str(folder))
    assert config["model_type"] == json.loads((folder / "config.json").read_text())["model_type"]
    _assert_equal_states(state, _reference_state(folder))
    assert tok is not None and tok.eos_id == tok.token_to_id("<|endoftext|>")
    if kind == "gpt2":  # Conv1D layout kept: c_attn [in, 3*out]
        assert state["transformer.h.0.attn.c_attn.weight"].shape == (32, 96)


def test_sharded_folder(make_tiny_hf_model, tmp_path):
    from transformers import AutoModelForCausalLM

    src = make_tiny_hf_model("llama_gqa")
    model = AutoModelForCausalLM.from_pretrained(src)
    model.save_pretrained(tmp_path, max_shard_size="20KB")
    shards = sorted(p.name for p in tmp_path.glob("model-*.safetensors"))
    assert (tmp_path / "model.safetensors.index.json").is_file() and len(shards) > 2
    _, state, tok = load_checkpoint(str(tmp_path))
    assert tok is None  # no tokenizer files were saved here
    _assert_equal_states(state, _reference_state(src))

    # a shard file missing: named in the error
    (tmp_path / shards[1]).unlink()
    with pytest.raises(FileNotFoundError, match=shards[1]):
        load_checkpoint(str(tmp_path))


def test_index_pointing_at_a_tensor_the_shard_lacks(make_tiny_hf_model, tmp_path):
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(make_tiny_hf_model("gpt2")).save_pretrained(
        tmp_path, max_shard_size="20KB"
    )
    index_path = tmp_path / "model.safetensors.index.json"
    index = json.loads(index_path.read_text())
    name, shard = next(iter(index["weight_map"].items()))
    other = next(s for s in set(index["weight_map"].values()) if s != shard)
    index["weight_map"][name] = other
    index_path.write_text(json.dumps(index))
    with pytest.raises(ValueError, match=name.replace(".", r"\.")):
        load_checkpoint(str(tmp_path))


def test_pickle_checkpoints_are_refused(make_tiny_hf_model, tmp_path):
    import torch

    src = make_tiny_hf_model("gpt2")
    for name in ("config.json", "tokenizer.json"):
        shutil.copy(src / name, tmp_path / name)
    marker = tmp_path / "unpickled"

    class Boom:  # would create `marker` if anything unpickled the file
        def __reduce__(self):
            return (Path.touch, (marker,))

    torch.save({"x": Boom()}, tmp_path / "pytorch_model.bin")
    with pytest.raises(ValueError, match="safe_serialization"):
        load_checkpoint(str(tmp_path))
    with pytest.raises(ValueError, match="never unpickles"):
        load_checkpoint(str(tmp_path / "pytorch_model.bin"))
    for suffix in (".pt", ".pth", ".ckpt"):
        with pytest.raises(ValueError, match="pickle"):
            load_checkpoint(str(tmp_path / f"model{suffix}"))
    assert not marker.exists()


def test_missing_config_and_empty_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_checkpoint(str(tmp_path))
    (tmp_path / "config.json").write_text('{"model_type": "llama"}')
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        load_checkpoint(str(tmp_path))


def test_bare_gpt2model_keys_and_mask_buffers_are_normalised(make_tiny_hf_model, tmp_path):
    """GPT2Model checkpoints (the hub's "gpt2") store "h.0..." keys and old saves carry the
    causal-mask buffers "h.N.attn.bias" / "attn.masked_bias"."""
    from safetensors.numpy import save_file

    src = make_tiny_hf_model("gpt2")
    ref = _reference_state(src)
    bare = {k.removeprefix("transformer."): v for k, v in ref.items()}
    bare["h.0.attn.bias"] = np.tril(np.ones((1, 1, 64, 64), np.float32))
    bare["h.0.attn.masked_bias"] = np.array(-1e4, np.float32)
    save_file(bare, str(tmp_path / "model.safetensors"))
    shutil.copy(src / "config.json", tmp_path / "config.json")
    _, state, _ = load_checkpoint(str(tmp_path))
    _assert_equal_states(state, ref)


def test_bfloat16_tensors_keep_their_dtype(make_tiny_hf_model, tmp_path):
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(make_tiny_hf_model("llama_gqa"))
    model.to(torch.bfloat16).save_pretrained(tmp_path)
    _, state, _ = load_checkpoint(str(tmp_path))
    w = state["model.layers.0.self_attn.q_proj.weight"]
    assert w.dtype.name == "bfloat16"
    ref = model.state_dict()["model.layers.0.self_attn.q_proj.weight"].float().numpy()
    np.testing.assert_array_equal(w.astype(np.float32), ref)


def _fake_hub_cache(cache: Path, repo_id: str, folder: Path, commit: str) -> None:
    """The huggingface_hub cache layout: models--org--name/{refs/main, snapshots/<commit>/}."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    shutil.copytree(folder, repo / "snapshots" / commit)


def test_hub_id_offline_from_cache(make_tiny_hf_model, tmp_path, monkeypatch):
    import huggingface_hub.constants as hf_constants

    src = make_tiny_hf_model("llama_tied")
    commit = "0123456789abcdef0123456789abcdef01234567"
    _fake_hub_cache(tmp_path, "tiny-org/tiny-llama", src, commit)
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    config, state, tok = load_checkpoint("tiny-org/tiny-llama")
    _assert_equal_states(state, _reference_state(src))
    assert config["model_type"] == "llama" and tok is not None
    _, state_at_commit, _ = load_checkpoint("tiny-org/tiny-llama", revision=commit)
    assert sorted(state_at_commit) == sorted(state)

    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_checkpoint("tiny-org/not-cached")
    with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE"):
        load_checkpoint("tiny-org/tiny-llama", revision="fedcba9876543210fedcba9876543210fedcba98")
