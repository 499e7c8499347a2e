"""Where ``make demo`` gets SmolLM2-135M-Instruct outside this workplace, without the network:
the GGUF at ``$LORA_JAX_SMOLLM2_GGUF`` when set, else the Hub id (conf/model/smollm2-135m.yaml);
an empty source is a ConfigError (never the current directory read as a model); a Hub id that
cannot be fetched is a one-line MissingFile naming how to point the run at a file; the
Makefile leaves the variable unset (not empty) when ../shared/bin/get-smollm2 is absent."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from lora_jax.errors import ConfigError, LoraJaxError, MissingFile
from lora_jax.models.load import load_checkpoint

ROOT = Path(__file__).resolve().parents[2]
ENV = "LORA_JAX_SMOLLM2_GGUF"
HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"


def _compose(overrides: list[str]):
    """The config ``python -m lora_jax.train`` (``make demo``) would run with these overrides."""
    from hydra import compose, initialize_config_dir

    from lora_jax.run import schema

    schema.register()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base="1.3"):
        return compose(config_name="config", overrides=overrides)


@pytest.fixture(scope="module")
def demo_cfg():
    """The demo's composed config, resolved later per test (the env var is read at access)."""
    return _compose([])


def test_demo_source_is_the_hub_id_when_the_env_var_is_unset(demo_cfg, monkeypatch):
    monkeypatch.delenv(ENV, raising=False)
    assert demo_cfg.model.name == "smollm2-135m"
    assert demo_cfg.model.source == HUB_ID


def test_demo_source_is_the_gguf_when_the_env_var_is_set(demo_cfg, monkeypatch, tmp_path):
    gguf = str(tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf")
    monkeypatch.setenv(ENV, gguf)
    assert demo_cfg.model.source == gguf


def test_empty_env_var_is_a_config_error_not_the_current_dir(demo_cfg, monkeypatch, tmp_path):
    # a folder that would fail differently (DataError on its config.json) if it were read
    (tmp_path / "config.json").write_text("{not json")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv(ENV, "")
    source = demo_cfg.model.source
    assert source == ""
    with pytest.raises(ConfigError, match="model.source is empty") as ei:
        load_checkpoint(source)
    assert ENV in str(ei.value) and HUB_ID in str(ei.value)
    assert "\n" not in str(ei.value)


@pytest.mark.parametrize("source", ["", "  "])
def test_empty_model_source_is_a_config_error(source, monkeypatch, tmp_path):
    from lora_jax.models.pretrained import load_model

    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match="model.source is empty"):
        load_model(source)


def test_empty_model_source_override_composes_to_empty(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    cfg = _compose(["model.source="])
    with pytest.raises(ConfigError, match=r"model\.source=\.\.\."):
        load_checkpoint(cfg.model.source)


def _unreachable(monkeypatch) -> None:
    """snapshot_download as huggingface_hub runs it with no network: a multi-line
    LocalEntryNotFoundError (connection error, nothing cached)."""
    import huggingface_hub
    from huggingface_hub.errors import LocalEntryNotFoundError

    def offline(repo_id, **kw):
        raise LocalEntryNotFoundError(
            "Got: ConnectError: [Errno -2] Name or service not known\nAn error happened while "
            "trying to locate the files on the Hub. Please check your internet connection."
        )

    monkeypatch.setattr(huggingface_hub, "snapshot_download", offline)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def test_unreachable_hub_says_how_to_point_at_a_file(monkeypatch):
    _unreachable(monkeypatch)
    with pytest.raises(MissingFile) as ei:
        load_checkpoint(HUB_ID)
    msg = str(ei.value)
    assert "\n" not in msg, msg  # the app prints it as one line
    assert f"could not fetch {HUB_ID!r}" in msg and "Name or service not known" in msg
    assert f"{ENV}=/path/to.gguf" in msg and "model.source=" in msg
    assert isinstance(ei.value, LoraJaxError)  # the app's user-error path, no traceback


def test_unreachable_hub_for_another_model_names_model_source_only(monkeypatch):
    _unreachable(monkeypatch)
    with pytest.raises(MissingFile, match="model.source=") as ei:
        load_checkpoint("openai-community/gpt2")
    assert ENV not in str(ei.value)


def test_offline_and_not_cached_says_how_to_point_at_a_file(monkeypatch, tmp_path):
    import huggingface_hub.constants as hf_constants

    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(MissingFile, match="HF_HUB_OFFLINE") as ei:
        load_checkpoint(HUB_ID)
    assert f"{ENV}=/path/to.gguf" in str(ei.value) and "\n" not in str(ei.value)


def _make_env(shared: Path, environ: dict[str, str]) -> dict[str, str]:
    """The LORA_JAX_* variables the Makefile's ENV gives a recipe (make demo / make test)."""
    out = subprocess.run(
        ["make", "-s", "--no-print-directory", "--eval",
         "print-env: ; @$(ENV) env | grep ^LORA_JAX_ || true", "print-env", f"SHARED={shared}"],
        cwd=ROOT, env=environ, capture_output=True, text=True, timeout=30, check=True,
    )  # fmt: skip
    assert out.stderr == "", out.stderr  # no "get-smollm2: No such file or directory"
    return dict(line.split("=", 1) for line in out.stdout.splitlines())


REAL_FILES = [(ENV, "get-smollm2"), ("LORA_JAX_GEMMA3_GGUF", "get-gemma3")]


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.parametrize("preset", [None, ""])
@pytest.mark.parametrize("env,_script", REAL_FILES)
def test_makefile_leaves_the_env_var_unset_without_get_smollm2(preset, env, _script, tmp_path):
    environ = {k: v for k, v in os.environ.items() if k != env}
    if preset is not None:
        environ[env] = preset
    got = _make_env(tmp_path / "no-shared", environ)
    assert env not in got  # unset, not empty: the demo then loads the Hub id


@pytest.mark.skipif(shutil.which("make") is None, reason="needs GNU make")
@pytest.mark.parametrize("env,name", REAL_FILES)
def test_makefile_takes_the_path_from_get_smollm2(env, name, tmp_path):
    script = tmp_path / "shared" / "bin" / name
    script.parent.mkdir(parents=True)
    script.write_text(f"#!/bin/sh\necho /models/{name}.gguf\n")
    script.chmod(0o755)
    environ = {k: v for k, v in os.environ.items() if k != env}
    assert _make_env(tmp_path / "shared", environ)[env] == f"/models/{name}.gguf"
    environ[env] = "/mine.gguf"  # an explicit path wins
    assert _make_env(tmp_path / "shared", environ)[env] == "/mine.gguf"


def test_gemma3_config_reads_its_env_var_else_the_hub_id(monkeypatch, tmp_path):
    cfg = _compose(["model=gemma3-270m"])
    monkeypatch.delenv("LORA_JAX_GEMMA3_GGUF", raising=False)
    assert cfg.model.name == "gemma3-270m" and cfg.model.source == "google/gemma-3-270m"
    monkeypatch.setenv("LORA_JAX_GEMMA3_GGUF", str(tmp_path / "g.gguf"))
    assert cfg.model.source == str(tmp_path / "g.gguf")
