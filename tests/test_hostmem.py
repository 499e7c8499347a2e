"""The host malloc policy of the entry points (lora_jax/run/malloc.py, lora_jax/run/entry.py): XLA:CPU's per-execution temp buffer reuses
mapped pages instead of page-faulting a fresh mmap in at every call.

Each case runs in a fresh interpreter (the policy depends on what ran before ``import
lora_jax``) and counts the minor page faults of 30 calls of a jitted function whose temp buffer
is 128 MB (32768 pages of 4 KiB), after 2 warm-up calls. With the system defaults every call
faults its buffer in; with the policy most calls fault nothing, and a few (measured: up to 5 in
80) still fault one buffer in while the heap settles (the previous call's buffer is freed on
XLA's thread just after its output is ready, so two can briefly coexist), with the resident
size bounded (730-860 MB over 80 calls). Page-fault counts, not times: they do not depend on
load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="glibc malloc policy: Linux only"
)

PROBE = r"""
import json, os, resource, sys
order = sys.argv[1]
if order == "jax-first":
    import jax, jax.numpy as jnp
    jnp.ones(1).block_until_ready()  # the backend's threads now exist
import lora_jax, lora_jax.run.hostmem as hostmem
if order == "library":  # a user's script: the library imported, no entry point
    import lora_jax.train.engine, lora_jax.run.jobs, lora_jax.run.app, lora_jax.run.evaluate_many
else:  # what the entry points (python -m lora_jax.train ...) do before importing jax's users
    import lora_jax.run.entry
    lora_jax.run.entry.apply_host_malloc_policy()
import jax, jax.numpy as jnp

@jax.jit
def f(x, w):  # one [8192, 4096] fp32 temporary: 128 MB of temp buffer, 4 GFLOP
    return jnp.sum(jnp.sin(x @ w))

x, w = jnp.ones((8192, 64), jnp.float32), jnp.ones((64, 4096), jnp.float32) * 1e-3
for _ in range(2):
    f(x, w).block_until_ready()
faults = []
for _ in range(30):
    r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    f(x, w).block_until_ready()
    faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps({"status": hostmem.status(), "faults": sum(faults), "median": sorted(faults)[15]}))
"""


def _probe(order: str, **env) -> dict:
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "LORA_JAX_HOST"))}
    e.update(JAX_PLATFORMS="cpu", **env)
    out = subprocess.run(
        [sys.executable, "-c", PROBE, order], env=e, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _env_policy() -> dict:
    out = subprocess.run(
        [sys.executable, "-m", "lora_jax.run.hostmem"], capture_output=True, text=True, check=True
    )
    lines = out.stdout.strip().splitlines()
    assert lines and all(line.startswith("export MALLOC_") for line in lines), out.stdout
    return dict(line.removeprefix("export ").split("=", 1) for line in lines)


def test_policy_keeps_the_temp_buffer_mapped():
    # a call that maps its 128 MB temp buffer afresh faults ~32768 pages in: ~983k over 30
    system = _probe("lora-first", LORA_JAX_HOST_MALLOC="system")
    retain = _probe("lora-first")
    late = _probe("jax-first")
    library = _probe("library")
    env = _probe("jax-first", **_env_policy())
    assert system["status"] == "system: LORA_JAX_HOST_MALLOC=system"
    assert system["median"] > 30_000, system
    assert retain["status"] == "retain"
    assert retain["faults"] < system["faults"] / 3 and retain["median"] < 1_000, (retain, system)
    # imported after jax started its threads: not applied (it would not take), and says why
    assert late["status"].startswith("system:") and "import lora_jax first" in late["status"]
    assert late["median"] > 30_000, late
    # importing the library (every stage of it) changes no process-wide state
    assert library["status"] == "system: not applied", library
    assert library["median"] > 30_000, library
    # the environment form works whatever the import order
    assert env["status"] == "retain (environment)"
    assert env["faults"] < system["faults"] / 3 and env["median"] < 1_000, (env, system)


def test_bad_policy_value_names_the_choices():
    e = dict(os.environ, LORA_JAX_HOST_MALLOC="bogus")
    out = subprocess.run(
        [sys.executable, "-c", "import lora_jax.run.entry as e; e.apply_host_malloc_policy()"],
        env=e,
        capture_output=True,
        text=True,
    )
    assert out.returncode != 0
    assert "LORA_JAX_HOST_MALLOC='bogus'" in out.stderr and "'system'" in out.stderr


def test_not_applied_when_jax_runs_on_an_accelerator():
    e = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "LORA_JAX_HOST"))}
    e["JAX_PLATFORMS"] = "cuda"
    code = (
        "import lora_jax.run.entry as e, lora_jax.run.hostmem as h; "
        "e.apply_host_malloc_policy(); print(h.status())"
    )
    out = subprocess.run([sys.executable, "-c", code], env=e, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert (
        out.stdout.strip() == "system: jax runs on an accelerator (GPU/TPU plugin or JAX_PLATFORMS)"
    )
