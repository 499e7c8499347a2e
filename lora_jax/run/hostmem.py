"""The host memory policy (:mod:`lora_jax.run.malloc`, applied by ``import lora_jax``): its state,
and its environment-variable form.

    python -m lora_jax.run.hostmem            # prints `export MALLOC_...=...` lines
    eval "$(python -m lora_jax.run.hostmem)"  # then start a process that imports jax/torch first

``status()`` is ``"retain"`` when the policy is in effect, else ``"system: <why>"`` (recorded
in results.json as ``run.host_malloc``).
"""

from __future__ import annotations

import argparse

from lora_jax.run.malloc import ENV, ENV_EQUIVALENT, malloc_arenas, retain, status

__all__ = ["ENV", "ENV_EQUIVALENT", "main", "malloc_arenas", "retain", "status"]


def main(argv: list[str] | None = None) -> int:
    """Print the policy as shell ``export`` lines (glibc reads them when a process starts)."""
    p = argparse.ArgumentParser(prog="python -m lora_jax.run.hostmem", description=main.__doc__)
    p.parse_args(argv)
    for k, v in ENV_EQUIVALENT.items():
        print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
