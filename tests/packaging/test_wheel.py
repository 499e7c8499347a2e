"""The Hydra config tree ships inside the package: build the wheel (non-editable), check it holds
every conf/ YAML file as lora_jax/conf/..., install it into a scratch target and compose the
app's config from the installed copy, outside the source checkout."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_wheel_ships_the_config_tree_and_the_installed_app_composes(tmp_path):
    # Build from a clean copy (setuptools reuses an in-tree build/ dir, stale files included).
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for name in ("lora_jax", "conf"):
        shutil.copytree(ROOT / name, src / name, symlinks=True,
                        ignore=shutil.ignore_patterns("__pycache__"))  # fmt: skip
    wheels = tmp_path / "wheels"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(wheels), str(src)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr[-3000:]
    (wheel,) = wheels.glob("lora_jax-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "lora_jax/report/cli.py" in names and "lora_jax/report.py" not in names
    conf = {
        f"lora_jax/conf/{p.relative_to(ROOT / 'conf')}" for p in (ROOT / "conf").rglob("*.yaml")
    }
    assert conf and conf <= names, sorted(conf - names)

    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(target),
         str(wheel)],
        check=True, capture_output=True, timeout=300,
    )  # fmt: skip
    code = (
        "from hydra import compose, initialize_config_dir\n"
        "from lora_jax.run import schema\n"
        "schema.register()\n"
        "with initialize_config_dir(config_dir=str(schema.conf_dir()), version_base='1.3'):\n"
        "    cfg = compose('config', ['experiment=e2e_paper_gpt2m'])\n"
        "print(schema.conf_dir(), cfg.name, cfg.optim.warmup_steps)\n"
    )
    env = os.environ | {"PYTHONPATH": str(target)}
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    conf_dir, name, warmup = proc.stdout.split()
    assert Path(conf_dir).is_relative_to(target) and not Path(conf_dir).is_symlink()
    assert (name, warmup) == ("gpt2-medium-e2e-q,v-r4-a32-s110", "500")
