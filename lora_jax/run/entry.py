"""The command-line entry points (``python -m lora_jax.train|evaluate|bench``, console scripts).

Each one applies the host malloc policy (lora_jax.run.malloc) before jax is imported, and only
then imports the app: the policy is a process-wide setting, so it belongs to the program, not
to ``import lora_jax`` (a library import changes no process state).
"""

from __future__ import annotations


def apply_host_malloc_policy() -> None:
    """The host malloc policy (lora_jax.run.malloc), unless ``LORA_JAX_HOST_MALLOC=system``."""
    from lora_jax.run import malloc

    malloc.apply_from_env()


def train() -> None:
    apply_host_malloc_policy()
    from lora_jax.run.app import main

    main()


def evaluate() -> None:
    import sys

    apply_host_malloc_policy()
    from lora_jax.run.evaluate import main

    sys.exit(main())


def bench() -> None:
    apply_host_malloc_policy()
    from lora_jax.bench.cli import main

    main()
