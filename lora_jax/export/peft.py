"""LoRA trees to and from Hugging Face PEFT adapters (``adapter_config.json`` +
``adapter_model.safetensors``), so an adapter trained here loads with
``peft.PeftModel.from_pretrained`` and one trained with PEFT loads here.

Layouts. Ours: ``a: [in, r]``, ``b: [r, out_block]``, ``ΔW_kernel = s·a·b`` on an ``[in, out]``
kernel. PEFT's: ``lora_A.weight: [r, in]``, ``lora_B.weight: [out, r]``, forward
``x·Aᵀ·Bᵀ·s`` (peft/tuners/lora/layer.py ``Linear.forward``), the same for ``nn.Linear`` and,
with ``fan_in_fan_out=True``, GPT-2's ``Conv1D`` (only the merged weight is transposed there).
So ``lora_A = aᵀ`` and ``lora_B = bᵀ`` for every module, and PEFT's scale is
``lora_alpha / r`` (``use_rslora``: ``/ √r``), from which each module's alpha is recovered.

GPT-2's fused ``c_attn`` (and Phi-3's ``qkv_proj`` / ``gate_up_proj``, separate modules here).
We adapt its q, k, v column blocks separately (the original code's ``MergedLinear``); PEFT
holds one adapter per module. The exact equivalent is one ``c_attn``
adapter of rank ``R = Σ r_block`` whose A stacks the blocks' A rows and whose B is block
diagonal (zero rows for a block without an adapter, e.g. k in the paper's q,v setting), with
``lora_alpha`` chosen so that PEFT's scale equals ours (for q,v at equal r: rank 2r and α
doubled). The adapter folder's README.md and ``lora_jax_export.json`` say so; importing such an
adapter splits it back into blocks (dropping the zero columns, so the ranks round-trip).

Variants. DoRA's magnitude is written as PEFT writes it (``<module>.lora_magnitude_vector``,
``[out]``, ``use_dora: true``); in a fused kernel a block without an adapter gets its base
columns' norms (a factor of exactly 1), which needs the base params. PiSSA and OLoRA adapters
are exported as PEFT converts them for a base that was not modified
(``save_pretrained(path_initial_model_for_weight_conversion=...)``): the plain LoRA adapter
``A' = [A; A0]``, ``B' = [B, -B0]`` of rank 2r on the original W (:func:`lora_jax.lora.params.factors`),
so it loads on the untouched base model; ``lora_jax_export.json`` says so.

Module names come from :func:`lora_jax.models.convert.hf_name` (the mapping used to load
checkpoints), so they cannot drift from the model code.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from lora_jax.errors import AdapterMismatch, DataError, MissingFile
from lora_jax.lora.params import factors, iter_adapters, kernel_block
from lora_jax.lora.targeting import suffix_match
from lora_jax.models.config import ModelConfig
from lora_jax.models.convert import hf_name, param_shapes
from lora_jax.models.registry import fused_modules, lora_modules

CONFIG_NAME = "adapter_config.json"
WEIGHTS_NAME = "adapter_model.safetensors"
SIDECAR_NAME = "lora_jax_export.json"
PREFIX = "base_model.model."  # PeftModelForCausalLM -> LoraModel -> the transformers model
_LAYER = re.compile(r"^(?:h|layers)_\d+$")


def module_name(path: tuple[str, ...], cfg: ModelConfig) -> str:
    """Our module scope ("layers_3", "self_attn", "q_proj") -> transformers' module name
    ("model.layers.3.self_attn.q_proj"), via the loader's name mapping."""
    return hf_name((*path, "kernel"), cfg)[0].removesuffix(".weight")


def _suffix(path: tuple[str, ...]) -> str:
    """The module path after the layer scope: ("h_0", "attn", "c_attn") -> "attn.c_attn"."""
    i = next(k for k, seg in enumerate(path) if _LAYER.match(seg))
    return ".".join(path[i + 1 :])


def _alpha(scale: float, r: int, rslora: bool) -> float:
    return float(scale * (math.sqrt(r) if rslora else r))


def _hf_modules(cfg: ModelConfig) -> dict[tuple[str, ...], list[tuple[str, tuple[str, ...], int]]]:
    """transformers' LoRA-adaptable modules (as our scope of the same name) -> their column
    blocks in row order: ``(block, our module scope, width)``. GPT-2's ``c_attn``: q, k, v of
    one kernel; Phi-3's ``qkv_proj`` / ``gate_up_proj``: the separate modules we keep
    (``registry.FUSED``), widths from the config (k and v narrower with grouped-query heads)."""
    modules, fused = lora_modules(cfg), fused_modules(cfg)
    part_of = {p: whole for whole, parts in fused.items() for p in parts}
    out: dict[tuple[str, ...], list[tuple[str, tuple[str, ...], int]]] = {}
    for p, shape in param_shapes(cfg).items():
        scope = p[:-1]
        if p[-1] != "kernel" or not any(_LAYER.match(seg) for seg in scope):
            continue
        suffix = _suffix(scope)
        if suffix not in modules:
            continue
        blocks = modules[suffix]
        hf = scope
        if suffix in part_of:
            i = next(k for k, seg in enumerate(scope) if _LAYER.match(seg))
            hf = scope[: i + 1] + tuple(part_of[suffix].split("."))
        out.setdefault(hf, []).extend((b, scope, shape[-1] // len(blocks)) for b in blocks)
    for hf, entries in out.items():  # a fused module's parts in the fused weight's row order
        if len({scope for _, scope, _ in entries}) > 1:
            parts = fused[_suffix(hf)]
            entries.sort(key=lambda e: parts.index(_suffix(e[1])))
    return out


def to_peft(
    lora: Mapping[str, Any],
    cfg: ModelConfig,
    use_rslora: bool = False,
    params: Mapping[str, Any] | None = None,
) -> tuple[dict[str, np.ndarray], dict[str, tuple[int, float]], dict[str, Any]]:
    """LoRA tree -> (PEFT state dict, {module name: (r, alpha)}, fused-module notes).

    State dict keys ``base_model.model.<module>.lora_{A,B}.weight``; A ``[r, in]``, B
    ``[out, r]`` float32. ``use_rslora`` states how PEFT should turn alpha into the scale (any
    scale is exported exactly either way; it only changes the alpha values written).
    ``params`` (the base): needed for a DoRA adapter on some blocks of a fused kernel only.
    """
    layout = _hf_modules(cfg)
    where = {(scope, b): (hf, k) for hf, entries in layout.items()
             for k, (b, scope, _) in enumerate(entries)}  # fmt: skip
    by_module: dict[tuple[str, ...], dict[int, Any]] = {}
    for path, name, ad in iter_adapters(lora):
        if (path, name) not in where:
            raise DataError(
                f"adapter {'/'.join(path)}/{name} is no block of a {cfg.model_type} module"
            )
        hf, k = where[(path, name)]
        by_module.setdefault(hf, {})[k] = ad
    state: dict[str, np.ndarray] = {}
    ranks: dict[str, tuple[int, float]] = {}
    fused: dict[str, Any] = {}
    for hf, ads in by_module.items():
        entries = layout[hf]
        blocks = [b for b, _, _ in entries]
        name = module_name(hf, cfg)
        present = sorted(ads)
        fac = [factors(ads[k]) for k in present]  # PiSSA/OLoRA: the converted rank-2r factors
        a_s = [np.asarray(a, np.float32) for a, _ in fac]
        b_s = [np.asarray(b, np.float32) for _, b in fac]
        s_s = [float(np.asarray(ads[k]["scale"])) for k in present]
        dora = ["m" in ads[k] for k in present]
        if any(dora) and not all(dora):
            raise DataError(f"{name}: DoRA on some blocks of a fused kernel and not others")
        big_s = s_s[0]
        if len(entries) == 1:
            a_t, b_t, r = a_s[0].T, b_s[0].T, a_s[0].shape[1]
        else:  # fused kernel: one block-structured adapter of rank Σ r_block
            starts = np.cumsum([0] + [w for _, _, w in entries])
            r = sum(a.shape[1] for a in a_s)
            a_t = np.concatenate([a.T for a in a_s], 0)
            b_t = np.zeros((int(starts[-1]), r), np.float32)
            col, rows = 0, {}
            for k, a, b, s in zip(present, a_s, b_s, s_s):
                n, row, width = a.shape[1], int(starts[k]), entries[k][2]
                b_t[row : row + width, col : col + n] = b.T * (s / big_s)
                rows[blocks[k]] = {"rows": [row, row + width], "rank_cols": [col, col + n], "r": n}
                col += n
            fused[name] = {
                "blocks": rows,
                "zero_blocks": [b for k, b in enumerate(blocks) if k not in ads],
                "note": (
                    f"lora-jax adapts the column blocks {[blocks[k] for k in present]} of this "
                    f"fused kernel separately; exported as one rank-{r} adapter (A stacks the "
                    f"blocks' A, B is block structured with zeros elsewhere) with lora_alpha set "
                    f"so that PEFT's scale equals lora-jax's ({big_s:g}): the exact same ΔW"
                ),
            }
        state[f"{PREFIX}{name}.lora_A.weight"] = np.ascontiguousarray(a_t)
        state[f"{PREFIX}{name}.lora_B.weight"] = np.ascontiguousarray(b_t)
        if any(dora):
            state[f"{PREFIX}{name}.lora_magnitude_vector"] = _magnitude(ads, entries, params, name)
        converted = [blocks[k] for k in present if "a0" in ads[k]]
        if converted:
            fused.setdefault(name, {})["converted"] = (
                f"PiSSA/OLoRA blocks {converted} exported as the plain LoRA adapter PEFT converts "
                "them to (A' = [A; A0], B' = [B, -B0], rank 2r) for the original base weights"
            )
        ranks[name] = (r, _alpha(big_s, r, use_rslora))
    return state, ranks, fused


def _magnitude(ads, entries, params, name: str) -> np.ndarray:
    """DoRA's magnitude over the module's whole output (absent blocks of a fused kernel: the
    base columns' norms, a factor of exactly 1 as PEFT computes it for a zero ΔW)."""
    parts = []
    for k, (blk, scope, _) in enumerate(entries):
        if k in ads:
            parts.append(np.asarray(ads[k]["m"], np.float32))
            continue
        if params is None:
            raise DataError(
                f"{name}: a DoRA adapter on part of a fused kernel needs the base params to "
                "export (save_peft(..., params=base_params))"
            )
        own = [b for b, s, _ in entries if s == scope]  # the blocks of this scope's kernel
        w = np.asarray(kernel_block(params, scope, own.index(blk), len(own)), np.float32)
        parts.append(np.linalg.norm(w, axis=0))
    return np.ascontiguousarray(np.concatenate(parts))


def peft_config(
    ranks: Mapping[str, tuple[int, float]],
    cfg: ModelConfig,
    use_rslora: bool = False,
    base_model_name_or_path: str | None = None,
    use_dora: bool = False,
) -> dict[str, Any]:
    """``adapter_config.json`` for these modules: the most common (r, alpha) as ``r`` /
    ``lora_alpha``, the rest through ``rank_pattern`` / ``alpha_pattern`` keyed by the exact
    module name (PEFT matches a pattern on a ``.``-bounded suffix); target_modules by suffix
    (``self_attn.q_proj``) when every layer has it, else by full module name."""
    r0 = Counter(r for r, _ in ranks.values()).most_common(1)[0][0]
    a0 = Counter(a for _, a in ranks.values()).most_common(1)[0][0]
    rank_pattern = {re.escape(n): r for n, (r, _) in ranks.items() if r != r0}
    alpha_pattern = {re.escape(n): a for n, (_, a) in ranks.items() if a != a0}
    per_suffix: dict[str, list[str]] = {}
    for n in ranks:
        m = re.match(r"^.*?\.(?:h|layers)\.\d+\.(.+)$", n)
        per_suffix.setdefault(m[1] if m else n, []).append(n)
    targets: list[str] = []
    for suffix, names in sorted(per_suffix.items()):
        targets += [suffix] if len(names) == cfg.num_layers else sorted(names)
    return {
        "peft_type": "LORA",
        "task_type": "CAUSAL_LM",
        "base_model_name_or_path": base_model_name_or_path,
        "r": r0,
        "lora_alpha": a0,
        "target_modules": targets,
        "rank_pattern": rank_pattern,
        "alpha_pattern": alpha_pattern,
        "use_rslora": use_rslora,
        "lora_dropout": 0.0,
        "bias": "none",
        "fan_in_fan_out": cfg.family == "gpt2",  # GPT-2's Conv1D stores [in, out]
        "init_lora_weights": True,
        "use_dora": use_dora,
        "modules_to_save": None,
        "inference_mode": True,
    }


def save_peft(
    lora: Mapping[str, Any],
    cfg: ModelConfig,
    out_dir: str | Path,
    use_rslora: bool = False,
    base_model_name_or_path: str | None = None,
    params: Mapping[str, Any] | None = None,
) -> Path:
    """Write ``adapter_config.json`` + ``adapter_model.safetensors`` (+ README.md and
    ``lora_jax_export.json`` describing fused modules and converted PiSSA/OLoRA modules) to
    ``out_dir``; returns it. ``params``: the base, for DoRA on part of a fused kernel."""
    from safetensors.numpy import save_file

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    state, ranks, fused = to_peft(lora, cfg, use_rslora, params)
    use_dora = any(k.endswith(".lora_magnitude_vector") for k in state)
    config = peft_config(ranks, cfg, use_rslora, base_model_name_or_path, use_dora)
    (out / CONFIG_NAME).write_text(json.dumps(config, indent=2) + "\n")
    save_file(state, str(out / WEIGHTS_NAME), metadata={"format": "pt"})
    (out / SIDECAR_NAME).write_text(json.dumps({"fused_modules": fused}, indent=2) + "\n")
    notes = "".join(
        f"- `{n}`: {f[k]}.\n" for n, f in fused.items() for k in ("note", "converted") if k in f
    )
    (out / "README.md").write_text(
        "# LoRA adapter exported by lora-jax\n\n"
        "Load with `peft.PeftModel.from_pretrained(base_model, this_folder)`.\n"
        + (f"\n## Fused modules\n\n{notes}" if notes else "")
    )
    return out


# ----------------------------------------------------------------------------- import


def _pattern(patterns: Mapping[str, Any], name: str) -> Any:
    for key, value in patterns.items():
        if suffix_match(key, name):  # PEFT's get_pattern_key rule: (.*\.)?(key)$
            return value
    return None


def load_peft(adapter_dir: str | Path, cfg: ModelConfig) -> dict:
    """A PEFT LoRA adapter folder -> our LoRA tree (float32) for a model with config ``cfg``.

    Fused kernels (GPT-2 ``c_attn``, Phi-3 ``qkv_proj`` / ``gate_up_proj``) are split into
    their blocks (Phi-3: the separate q/k/v, gate/up modules); a block whose B rows
    are all zero gets no adapter, and the A rows whose B columns are zero within a block are
    dropped (exact: they add nothing to that block's ΔW).
    """
    from safetensors.numpy import load_file

    folder = Path(adapter_dir)
    if not (folder / CONFIG_NAME).is_file() or not (folder / WEIGHTS_NAME).is_file():
        raise MissingFile(
            f"{folder} is not a PEFT adapter folder: it needs {CONFIG_NAME} and {WEIGHTS_NAME} "
            "(what `PeftModel.save_pretrained` writes)"
        )
    pc = json.loads((folder / CONFIG_NAME).read_text())
    if pc.get("peft_type", "LORA") != "LORA":
        raise DataError(f"{folder} holds a {pc['peft_type']} adapter; only LORA is supported")
    for key, bad in (("bias", "all"), ("bias", "lora_only")):
        if pc.get(key) == bad:
            raise DataError(f"{folder}: {key}={bad!r} is not supported by lora-jax's LoRA layer")
    if pc.get("modules_to_save"):
        raise DataError(
            f"{folder} also trains full modules ({pc['modules_to_save']}); lora-jax imports "
            "LoRA factors only"
        )
    state = load_file(str(folder / WEIGHTS_NAME))
    layout = _hf_modules(cfg)
    paths = {module_name(hf, cfg): hf for hf in layout}
    rslora = bool(pc.get("use_rslora"))
    tree: dict = {}
    for key in sorted(k for k in state if k.endswith(".lora_A.weight")):
        name = key.removeprefix(PREFIX).removesuffix(".lora_A.weight")
        name = re.sub(r"\.default$", "", name)
        if name not in paths:
            raise AdapterMismatch(
                f"adapter tensor {key!r} targets {name!r}, which is not a LoRA-adaptable "
                f"{cfg.model_type} module (known e.g.: {sorted(paths)[:4]}...)"
            )
        a = np.asarray(state[key], np.float32)  # [R, in]
        b = np.asarray(state[key.replace(".lora_A.", ".lora_B.")], np.float32)  # [out, R]
        mag = state.get(key.replace(".lora_A.weight", ".lora_magnitude_vector"))
        if pc.get("use_dora") and mag is None:
            raise DataError(f"{folder}: use_dora is set but {name} has no lora_magnitude_vector")
        r = a.shape[0]
        alpha = _pattern(pc.get("alpha_pattern") or {}, name) or pc.get("lora_alpha", 8)
        scale = np.float32(alpha / (math.sqrt(r) if rslora else r))
        entries = layout[paths[name]]
        if b.shape[0] != sum(w for _, _, w in entries):
            raise AdapterMismatch(
                f"{key}: lora_B has {b.shape[0]} rows, the {cfg.model_type} module {name} has "
                f"{sum(w for _, _, w in entries)} outputs; the adapter is for another model"
            )
        row = 0
        for blk, scope, width in entries:
            b_blk = b[row : row + width].T  # [R, width]
            m_blk = None if mag is None else mag[row : row + width]
            row += width
            keep = np.any(b_blk != 0, axis=1) if len(entries) > 1 else np.ones(r, bool)
            if not keep.any():
                continue  # (DoRA: such a block's magnitude is its base norm, a factor of 1)
            node = tree
            for seg in scope:
                node = node.setdefault(seg, {})
            node[blk] = {
                "a": np.ascontiguousarray(a.T[:, keep]),
                "b": np.ascontiguousarray(b_blk[keep]),
                "scale": scale,
            }
            if m_blk is not None:
                node[blk]["m"] = np.asarray(m_blk, np.float32)
    if not tree:
        raise DataError(f"{folder}/{WEIGHTS_NAME} holds no lora_A/lora_B tensors")
    return tree
