"""orbax checkpoints of the trainable state only: the LoRA tree, the optimizer state, the step
(which is also the data position: batches are a pure function of (seed, step)). Never the
frozen base.

Each step also stores a JSON ``meta`` item beside the state:
- ``run_config``: the config values that shape the state (model, task, LoRA, optimizer,
  batch, steps, seed; ``run_fingerprint``). A resume compares them key by key and refuses a
  mismatch, naming every key that differs;
- ``adapter``: what the LoRA tree is (``adapter_meta``: model fingerprint, every adapted block
  with its r, α and scale, the LoRA config, the library version). ``load_adapter`` checks it
  against the model and config it is loaded into;
- ``train``: the training record so far (losses, first loss, eval before), so a resumed run
  keeps the metrics of its earlier part even after a ``kill -9``.

Safety rules: a save that orbax skips is an error (never a silent no-op); a new run refuses a
directory that holds another run's checkpoints; a restore walks back from the newest step to
the newest one that restores, moving the broken ones aside (``checkpoints.skipped/``).

Why one file: saving, the resume checks and restoring (state and adapter) share one on-disk
format and one meta schema; every rule above is about that format, kept in one place.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp

from lora_jax.console import console
from lora_jax.errors import AdapterMismatch, CheckpointError, ConfigError, MissingFile

# The config keys whose values shape the trainable state or the data order: a resume must
# agree on all of them (logging, evaluation and checkpoint cadence may change freely).
STATE_KEYS = (
    "model.source",
    "model.dtype",
    "model.param_dtype",
    "task.name",
    "task.dataset",
    "task.data_dir",
    "task.data_files",
    "task.train_file",
    "task.train_split",
    "task.sample",
    "task.format",
    "task.add_bos",
    "task.max_len",
    "task.max_train_examples",
    "task.validation_file",  # validation held out of train or not: shapes the data order
    "task.validation_split",
    "task.options",
    "lora",
    "optim",
    "trainer.batch_size",
    "trainer.epochs",
    "trainer.val_examples",  # a hold-out of training examples changes the data
    "trainer.max_steps",
    "trainer.data_seed",  # the batch order (null: seed); a packed job's is the pack's
    "seed",
)


def _get(d: Mapping[str, Any], dotted: str) -> Any:
    node: Any = d
    for k in dotted.split("."):
        if not isinstance(node, Mapping) or k not in node:
            return None
        node = node[k]
    return node


def _flat(prefix: str, v: Any) -> dict[str, Any]:
    if isinstance(v, Mapping):
        out: dict[str, Any] = {}
        for k in sorted(v, key=str):
            out |= _flat(f"{prefix}.{k}", v[k])
        return out or {prefix: {}}
    return {prefix: list(v) if isinstance(v, tuple) else v}


def run_fingerprint(resolved_cfg: Mapping[str, Any]) -> dict[str, Any]:
    """``{"optim.lr": 0.001, "lora.r": 8, ...}``: the state-shaping values of a resolved config
    (``STATE_KEYS``, dicts flattened to dotted keys; ``lora.preset`` is only a label)."""
    out: dict[str, Any] = {}
    for key in STATE_KEYS:
        out |= _flat(key, _get(resolved_cfg, key))
    out.pop("lora.preset", None)
    if out.get("lora.alpha") is None and "lora.r" in out:  # null means alpha = r
        out["lora.alpha"] = out["lora.r"]
    return out


def diff_fingerprints(stored: Mapping[str, Any], now: Mapping[str, Any]) -> list[str]:
    """``["lora.alpha: checkpoint 16, now 32", ...]`` for every key whose value differs."""
    keys = sorted(set(stored) | set(now))
    return [
        f"{k}: checkpoint {stored.get(k)!r}, now {now.get(k)!r}"
        for k in keys
        if stored.get(k) != now.get(k)
    ]


def adapter_meta(model_config: Any, lora_config: Mapping[str, Any], targets: list[Any]) -> dict:
    """What a LoRA tree is, stored beside it: the model it belongs to (architecture and
    shapes), every adapted block (``id`` → r, α, scale, [in, out]) and the LoRA config."""
    import lora_jax

    model = {
        k: getattr(model_config, k)
        for k in (
            "model_type",
            "vocab_size",
            "hidden_size",
            "num_layers",
            "num_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
        )  # fmt: skip
    }
    blocks = {
        t.id: {
            "r": int(t.r),
            "alpha": float(t.alpha),
            "scale": float(t.scale),
            "shape": [int(t.d_in), int(t.d_out)],
        }  # fmt: skip
        for t in targets
    }
    return {
        "format": 1,
        "lora_jax_version": lora_jax.__version__,
        "model": model,
        "blocks": blocks,
        "lora": {k: v for k, v in dict(lora_config).items() if k not in ("seed", "preset")},
    }


def diff_adapter(stored: Mapping[str, Any], expected: Mapping[str, Any]) -> list[str]:
    """Human-readable differences between an adapter's metadata and the one the current model
    and config would produce (empty when it fits)."""
    full = {m.get("method", "lora") for m in (stored, expected)}
    if full != {"lora"}:  # a full fine-tuning checkpoint holds every weight, no LoRA blocks
        if len(full) == 2:
            return [f"the checkpoint holds {stored.get('method', 'lora')} weights but this run is "
                    f"method={expected.get('method', 'lora')}: set method= to the run's"]  # fmt: skip
        if stored.get("model_type") != expected.get("model_type"):
            return [f"model_type: checkpoint {stored.get('model_type')!r}, this model "
                    f"{expected.get('model_type')!r}; load it with its own model.source"]  # fmt: skip
        return []
    out = [
        f"model {k}: adapter {stored['model'].get(k)!r}, this model {v!r}"
        for k, v in expected["model"].items()
        if stored["model"].get(k) != v
    ]
    if out:
        return out + ["the adapter was trained on another model; load it with its own model.source"]
    have, want = stored["blocks"], expected["blocks"]
    missing = sorted(set(want) - set(have))
    extra = sorted(set(have) - set(want))
    if missing:
        out.append(f"blocks the config adapts but the adapter lacks ({len(missing)}): "
                   f"{_few(missing)}")  # fmt: skip
    if extra:
        out.append(f"blocks the adapter has but the config does not adapt ({len(extra)}): "
                   f"{_few(extra)}")  # fmt: skip
    for field in ("r", "alpha", "scale"):
        bad = sorted(k for k in set(have) & set(want) if have[k][field] != want[k][field])
        if bad:
            pairs = sorted({(have[k][field], want[k][field]) for k in bad})
            vals = "; ".join(f"adapter {a:g}, config {b:g}" for a, b in pairs)
            out.append(f"{field} differs on {len(bad)} block(s) ({vals}), e.g. {_few(bad)}")
    if out:
        cfg = stored.get("lora", {})
        settings = " ".join(f"lora.{k}={cfg[k]!r}" for k in ("targets", "r", "alpha", "scaling",
                            "layers", "rank_pattern", "alpha_pattern") if k in cfg)  # fmt: skip
        out.append(f"the adapter was trained with: {settings}; set these to load it")
    return out


def _few(names: list[str], n: int = 4) -> str:
    return ", ".join(names[:n]) + (f", ... ({len(names) - n} more)" if len(names) > n else "")


def _jsonable(obj: Any) -> Any:
    """``obj`` with numpy/JAX scalars and arrays as plain JSON values (the meta item is JSON)."""
    import json

    def default(x: Any) -> Any:
        return np.asarray(x).tolist() if hasattr(x, "dtype") else str(x)

    return json.loads(json.dumps(obj, default=default))


def tree_digest(tree: Any) -> str:
    """sha256 over every leaf's path, dtype, shape and bytes (host copy): verifies a restore
    bit for bit, beyond what the storage layer checks. Leaves sharded over several processes
    are gathered first (a collective: every process of the job calls this, in save and
    restore alike)."""
    h = hashlib.sha256()
    for path, leaf in jax.tree_util.tree_leaves_with_path(_host_copy(tree)):
        a = np.ascontiguousarray(np.asarray(leaf))
        h.update(f"{jax.tree_util.keystr(path)}|{a.dtype}|{a.shape}|".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _host_copy(tree: Any) -> Any:
    """The full value of every leaf on this host (LoRA-sized trees: gathered, not streamed)."""
    from jax.experimental import multihost_utils

    def get(x: Any) -> Any:
        if isinstance(x, jax.Array) and not x.is_fully_addressable:
            return np.asarray(multihost_utils.process_allgather(x, tiled=True))
        return jax.device_get(x)

    return jax.tree.map(get, tree)


class Checkpointer:
    """Saves and restores (lora, opt_state, step) + meta in ``directory`` (orbax)."""

    def __init__(
        self,
        directory: str | Path,
        keep: int = 2,
        run_config: Mapping[str, Any] | None = None,
        adapter: Mapping[str, Any] | None = None,
    ):
        if int(keep) < 1:
            raise ConfigError(
                f"trainer.ckpt_keep={keep}: must be >= 1 (the final checkpoint is always kept)"
            )
        self.directory = Path(directory).absolute()
        self.run_config = dict(run_config or {})
        self.adapter = dict(adapter or {})
        self.manager = self._manager(keep)
        self.keep = keep

    def _manager(self, keep: int) -> ocp.CheckpointManager:
        return ocp.CheckpointManager(
            self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True)
        )

    def save(
        self, step: int, lora: Any, opt_state: Any, extra: dict[str, Any] | None = None
    ) -> None:
        """Write step ``step`` and wait for it; raises CheckpointError when it did not happen."""
        state = {"lora": lora, "opt_state": opt_state, "step": np.asarray(step, np.int64)}
        meta = {"step": int(step), "digest": tree_digest(state), "run_config": self.run_config,
                "adapter": self.adapter, **_jsonable(extra or {})}  # fmt: skip
        try:
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)
                ),
            )
            self.manager.wait_until_finished()
        except Exception as e:
            raise CheckpointError(
                f"writing the checkpoint of step {step} to {self.directory} failed: "
                f"{type(e).__name__}: {e}. Check free disk space and permissions"
            ) from e
        if not saved:
            raise CheckpointError(
                f"the checkpoint of step {step} was not written: {self.directory} already holds "
                f"step {self.latest_step()}; another run uses this directory. Use a new run dir "
                "(hydra.run.dir=... or output_dir=...)"
            )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def all_steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def read_meta(self, step: int) -> dict:
        out = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
        return dict(out["meta"])

    def check_resume(self, resume: bool) -> None:
        """Refuse a directory with another run's checkpoints (new run) or with checkpoints of
        a different configuration (resume): the error lists every key that differs."""
        steps = self.all_steps()
        if not steps:
            return
        if not resume:
            raise CheckpointError(
                f"{self.directory} already holds checkpoints (steps {steps}) of an earlier run. "
                "Continue that run with trainer.resume=true, or start this one in a new run dir "
                "(hydra.run.dir=... or output_dir=...); nothing was overwritten"
            )
        stored = None
        for step in reversed(steps):
            try:
                stored = self.read_meta(step).get("run_config")
                break
            except Exception:  # a broken step: restore() walks past it and says why
                continue
        if not stored:
            console.print(f"[yellow]warning[/]: {self.directory} stores no run config (an older "
                          "checkpoint); resuming without checking that the config matches")  # fmt: skip
            return
        diffs = diff_fingerprints(stored, self.run_config)
        if diffs:
            raise CheckpointError(
                f"trainer.resume=true, but {self.directory} was written with another "
                "configuration; these values shape the saved state and differ:\n  "
                + "\n  ".join(diffs)
                + "\nResume with the stored values, or start a new run in a new run dir"
            )

    def restore(
        self, lora_like: Any, opt_state_like: Any, step: int | None = None
    ) -> tuple[Any, Any, int, dict]:
        """Restore into the structure (and shapes/dtypes) of the given templates.

        Without ``step``: the newest step that restores; broken newer steps (truncated or
        missing files, failed checksums, wrong structure) are reported, moved to
        ``<directory>.skipped/`` (kept for inspection, out of the way of the next saves).
        """
        steps = [step] if step is not None else list(reversed(self.all_steps()))
        if not steps:
            raise MissingFile(f"no checkpoint in {self.directory}")
        template = {"lora": lora_like, "opt_state": opt_state_like, "step": np.asarray(0, np.int64)}
        abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, template)
        skipped: list[tuple[int, str]] = []
        for s in steps:
            try:
                out = self.manager.restore(
                    s,
                    args=ocp.args.Composite(
                        state=ocp.args.StandardRestore(abstract), meta=ocp.args.JsonRestore()
                    ),
                )
                st, meta = out["state"], dict(out["meta"])
                if int(st["step"]) != s or int(meta.get("step", s)) != s:
                    raise CheckpointError(f"stores step {int(st['step'])}, not {s}")
                if meta.get("digest") and tree_digest(st) != meta["digest"]:
                    raise CheckpointError("the arrays do not match the digest saved with them")
            except Exception as e:
                reason = f"{type(e).__name__}: {str(e).splitlines()[0][:300] if str(e) else ''}"
                console.print(f"[yellow]checkpoint step {s} does not restore, skipped[/]: {reason}")
                skipped.append((s, reason))
                continue
            if skipped:
                self._set_aside([k for k, _ in skipped])
                console.print(
                    f"resumed from step {s}, the newest intact one; skipped "
                    + ", ".join(f"step {k} ({r})" for k, r in skipped)
                    + f"; they were moved to {self.directory}.skipped/"
                )
            return st["lora"], st["opt_state"], s, meta
        raise CheckpointError(
            f"no checkpoint in {self.directory} restores:\n  "
            + "\n  ".join(f"step {k}: {r}" for k, r in skipped)
            + "\nStart a new run (new run dir), or restore an older copy of the directory"
        )

    def _set_aside(self, steps: list[int]) -> None:
        """Move broken steps aside (process 0 of a multi-process job moves, all wait)."""
        from jax.experimental import multihost_utils

        dest = self.directory.with_name(self.directory.name + ".skipped")
        self.manager.close()
        if jax.process_index() == 0:
            dest.mkdir(exist_ok=True)
        for s in steps if jax.process_index() == 0 else []:
            src = self.directory / str(s)
            if src.exists():
                target = dest / str(s)
                if target.exists():
                    shutil.rmtree(target)
                src.rename(target)
        if jax.process_count() > 1:
            multihost_utils.sync_global_devices("lora_jax checkpoint set aside")
        self.manager = self._manager(self.keep)

    def close(self) -> None:
        self.manager.close()


def _checkpoint_dir(directory: Path) -> Path:
    """A run dir or its checkpoints/ dir → the directory holding the numbered steps."""
    if (directory / "checkpoints").is_dir() and not any(
        p.name.isdigit() for p in directory.iterdir()
    ):
        return directory / "checkpoints"
    return directory


def load_adapter(
    directory: str | Path,
    lora_like: Any,
    step: int | None = None,
    expected: Mapping[str, Any] | None = None,
) -> tuple[Any, dict]:
    """``(lora tree, adapter metadata)`` of a run's checkpoint (its run dir or its
    ``checkpoints/``), for evaluation in a fresh model (no optimizer).

    ``expected``: ``adapter_meta`` of the model and config it is loaded into; any difference
    (other model, missing or extra blocks, other r / α / scale) raises AdapterMismatch naming
    it. Nothing is created on disk, even for a wrong path.
    """
    path = Path(directory).expanduser().absolute()
    if not path.is_dir():
        raise MissingFile(
            f"adapter={directory}: no such directory; pass a run dir or its checkpoints/ folder"
        )
    path = _checkpoint_dir(path)
    mgr = ocp.CheckpointManager(path, options=ocp.CheckpointManagerOptions(create=False))
    try:
        steps = sorted(mgr.all_steps())
        if not steps:
            raise MissingFile(
                f"adapter={directory}: no checkpoint in {path}; train with trainer.ckpt_every "
                "or let the run finish"
            )
        step = steps[-1] if step is None else step
        meta = dict(mgr.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"])
        stored = meta.get("adapter") or {}
        if expected is not None:
            if not stored:
                console.print(f"[yellow]warning[/]: {path}/{step} carries no adapter metadata "
                              "(an older checkpoint); only the tree's shapes are checked")  # fmt: skip
            else:
                diffs = diff_adapter(stored, expected)
                if diffs:
                    raise AdapterMismatch(
                        f"adapter={directory} (step {step}) does not fit this model and LoRA "
                        "config:\n  " + "\n  ".join(diffs)
                    )
        abstract = {"lora": jax.tree.map(ocp.utils.to_shape_dtype_struct, lora_like)}
        # onto the template's devices, whatever mesh (or process count) the run trained on
        restore_args = ocp.checkpoint_utils.construct_restore_args(abstract)
        try:
            out = mgr.restore(
                step,
                args=ocp.args.Composite(
                    state=ocp.args.PyTreeRestore(
                        abstract, restore_args=restore_args, partial_restore=True
                    )
                ),
            )
        except Exception as e:
            raise AdapterMismatch(
                f"adapter={directory} (step {step}) could not be read into this LoRA config: "
                f"{type(e).__name__}: {str(e)[:500]}"
            ) from e
        lora = out["state"]["lora"]
        _check_shapes(lora, lora_like, directory)
        return lora, stored
    finally:
        mgr.close()


def _check_shapes(got: Any, want: Any, directory: Any) -> None:
    g = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(got)}
    w = {jax.tree_util.keystr(p): np.shape(v) for p, v in jax.tree_util.tree_leaves_with_path(want)}
    bad = [f"{k}: adapter {g.get(k)}, config {w[k]}" for k in w if g.get(k) != w[k]]
    if bad:
        raise AdapterMismatch(f"adapter={directory}: shapes differ: {_few(bad)}")
