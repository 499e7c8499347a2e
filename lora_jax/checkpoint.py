"""orbax checkpoints of the trainable state only: the LoRA tree, the optimizer state, the step
(which is also the data position: batches are a pure function of (seed, step)). Never the
frozen base."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 2):
        self.directory = Path(directory).absolute()
        self.manager = ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def save(
        self, step: int, lora: Any, opt_state: Any, extra: dict[str, Any] | None = None
    ) -> None:
        state = {"lora": lora, "opt_state": opt_state, "step": np.asarray(step, np.int64)}
        meta = {"step": int(step), **(extra or {})}
        self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
            ),
        )
        self.manager.wait_until_finished()

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def restore(
        self, lora_like: Any, opt_state_like: Any, step: int | None = None
    ) -> tuple[Any, Any, int, dict]:
        """Restore into the structure (and shapes/dtypes) of the given templates."""
        step = self.latest_step() if step is None else step
        if step is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        template = {"lora": lora_like, "opt_state": opt_state_like, "step": np.asarray(0, np.int64)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        out = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
            ),
        )
        st = out["state"]
        return st["lora"], st["opt_state"], int(st["step"]), dict(out["meta"])

    def close(self) -> None:
        self.manager.close()


def load_adapter(directory: str | Path, lora_like: Any, step: int | None = None) -> Any:
    """The LoRA tree of a run's checkpoint, for evaluation in a fresh model (no optimizer)."""
    mgr = ocp.CheckpointManager(Path(directory).absolute())
    step = mgr.latest_step() if step is None else step
    if step is None:
        raise FileNotFoundError(
            f"no checkpoint in {directory}; train with trainer.ckpt_every or let the run finish"
        )
    abstract = {"lora": jax.tree.map(ocp.utils.to_shape_dtype_struct, lora_like)}
    out = mgr.restore(
        step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(abstract, partial_restore=True))
    )
    return out["state"]["lora"]
