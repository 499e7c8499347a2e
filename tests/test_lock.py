"""requirements.lock (what `make setup` and CI install from) pins every package the project's
`[test]` install needs, with an exact version that satisfies each requirement and a sha256."""

import re
from importlib import metadata
from pathlib import Path

import pytest
from packaging.version import Version

from lora_jax.train.env_info import canonical, dependency_closure, package_versions

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the lock is resolved on 3.11)
ROOT = Path(__file__).parents[1]
LINE = re.compile(r"^(?P<name>[A-Za-z0-9_.-]+)==(?P<version>\S+) \\\n    --hash=sha256:(?P<sha>[0-9a-f]{64})$", re.M)  # fmt: skip


@pytest.fixture(scope="module")
def lock() -> dict[str, Version]:
    text = (ROOT / "requirements.lock").read_text()
    pins = {canonical(m["name"]): Version(m["version"]) for m in LINE.finditer(text)}
    entries = [ln for ln in text.splitlines() if ln and not ln.startswith(("#", " "))]
    assert len(pins) == len(entries) > 50, "every entry is name==version with one sha256"
    return pins


def test_lock_covers_the_test_install_and_satisfies_every_requirement(lock):
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = project["dependencies"] + [f"{r}; extra == 'test'" for r in project["optional-dependencies"]["test"]]  # fmt: skip
    roots += tomllib.loads((ROOT / "pyproject.toml").read_text())["build-system"]["requires"]
    closure = dependency_closure(roots, extras=["test"])  # via the installed metadata
    missing = sorted(set(closure) - set(lock))
    assert not missing, f"not in requirements.lock (run `make lock`): {missing}"
    unmet = [
        f"{name}=={lock[name]} vs {req}"
        for name, (_, reqs) in closure.items()
        for req in reqs
        if not req.specifier.contains(lock[name], prereleases=True)
    ]
    assert not unmet, f"locked versions violate requirements (run `make lock`): {unmet}"
    # the CPU torch wheel of this machine's find-links, not the CUDA build from the index
    assert lock["torch"].local == "cpu"


def test_package_versions_records_the_installed_closure():
    versions = package_versions()
    assert versions["python"] and versions["jax"] == metadata.version("jax")
    assert {"flax", "optax", "numpy", "hydra-core"} <= set(versions)


def test_dependency_closure_follows_extras_and_markers():
    closure = dependency_closure(["lora-jax-not-a-dep; extra == 'docs'", "flax"], extras=["test"])
    assert "lora-jax-not-a-dep" not in closure  # marker false: never looked up
    assert {"flax", "jax", "numpy"} <= set(closure)
    assert [str(r) for r in closure["flax"][1]] == ["flax"]
