"""Broken model files give errors that name the file and the fix, with the library's error
chained as the cause (never a bare gguf / safetensors / json traceback): truncated or garbage
GGUF, invalid or incomplete config.json, truncated or garbage safetensors."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from lora_jax.models.pretrained import load_model
from tests.conftest import write_tiny_gpt2


def _gguf(path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_tensor("token_embd.weight", np.arange(64 * 256, dtype=np.float32).reshape(64, 256))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def _cut(path: Path, frac: float = 0.5) -> None:
    path.write_bytes(path.read_bytes()[: int(path.stat().st_size * frac)])


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory) -> Path:
    return write_tiny_gpt2(tmp_path_factory.mktemp("tiny_load_errors"))


def _copy(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _bad_config(folder: Path, text: str) -> Path:
    (folder / "config.json").write_text(text)
    return folder


CASES = {  # name → (make the broken source, file named in the error, what else it must say)
    "gguf truncated": (lambda d, t: (_cut(_gguf(t / "m.gguf"), 0.6), t / "m.gguf")[1], "m.gguf", "truncated"),
    "gguf garbage": (lambda d, t: (t / "g.gguf", (t / "g.gguf").write_bytes(b"\x07" * 300))[0], "g.gguf",
                     "not a readable GGUF file"),
    "gguf header only": (lambda d, t: (t / "h.gguf", (t / "h.gguf").write_bytes(b"GGUF\x03\x00\x00\x00"))[0],
                         "h.gguf", "download it again"),
    "config.json invalid": (lambda d, t: _bad_config(_copy(d, t / "c"), '{"model_type": "gpt2", '),
                            "config.json, line 1, column 24", "not valid JSON"),
    "config.json lacks a field": (lambda d, t: _bad_config(_copy(d, t / "k"), json.dumps({"model_type": "gpt2"})),
                                  "k (config)", "lacks 'n_embd'"),
    "safetensors truncated": (lambda d, t: (_cut(_copy(d, t / "s") / "model.safetensors"), t / "s")[1],
                              "model.safetensors", "truncated or corrupt"),
    "safetensors garbage": (lambda d, t: ((_copy(d, t / "x") / "model.safetensors").write_bytes(b"\xff" * 64),
                                          t / "x")[1], "model.safetensors", "not a readable safetensors file"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(CASES))
def test_broken_model_file_names_the_file_and_the_fix(case, tiny_folder, tmp_path):
    make, name, says = CASES[case]
    source = make(tiny_folder, tmp_path)
    with pytest.raises(ValueError) as ei:
        load_model(str(source))
    msg = str(ei.value)
    assert name in msg and says in msg, msg
    assert str(tmp_path) in msg  # the full path, not a bare file name
    assert ei.value.__cause__ is not None or case == "gguf truncated"
