"""The notebooks in notebooks/ run top to bottom (nbclient) on small budgets, and are stored
without outputs (rebuild them with ``python notebooks/_build.py``)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((ROOT / "notebooks").glob("*.ipynb"))


def test_three_notebooks_stored_without_outputs():
    assert [p.name[:2] for p in NOTEBOOKS] == ["01", "02", "03"]
    for path in NOTEBOOKS:
        nb = nbformat.read(path, as_version=4)
        for cell in nb.cells:
            if cell.cell_type == "code":
                assert cell.outputs == [] and cell.execution_count is None, (
                    f"{path.name} is stored with outputs; strip them (python notebooks/_build.py)"
                )


def _execute(path: Path, env: dict[str, str], monkeypatch) -> None:
    from nbclient import NotebookClient

    # the kernel inherits this environment: this checkout's lora_jax first, tiny budgets
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    monkeypatch.setenv("JAX_PLATFORMS", "cpu")
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    nb = nbformat.read(path, as_version=4)
    NotebookClient(nb, timeout=240, kernel_name="python3",
                   resources={"metadata": {"path": str(path.parent)}}).execute()  # fmt: skip
    assert all(c.execution_count for c in nb.cells if c.cell_type == "code")


def test_01_library_in_ten_cells(tiny_e2e_gpt2_dir, monkeypatch):
    _execute(NOTEBOOKS[0], {"NB_SOURCE": str(tiny_e2e_gpt2_dir), "NB_STEPS": "3"}, monkeypatch)


def test_02_rank_table(monkeypatch):
    _execute(NOTEBOOKS[1], {}, monkeypatch)


def test_03_subspace_analysis(monkeypatch):
    _execute(NOTEBOOKS[2], {}, monkeypatch)
