"""Writes the notebooks from the cell sources below (outputs empty):
``python notebooks/_build.py``. Edit here, rebuild, commit both."""

from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).parent

NB01 = [
    ("md", """# 01: lora-jax in ten cells
Load SmolLM2-135M-Instruct, pick LoRA targets, train a few steps on an E2E-format sample,
decode, merge, export to PEFT. Budget via env vars: `NB_STEPS` (default 30), `NB_SOURCE`
(default `$LORA_JAX_SMOLLM2_GGUF`; CI passes a tiny GPT-2 folder)."""),
    ("code", """import os, tempfile
from pathlib import Path
import jax, jax.numpy as jnp, numpy as np
from lora_jax.lora import LoraConfig, init as lora_init, merge, param_report
from lora_jax.models.pretrained import load_model
from lora_jax.models.registry import lora_modules
STEPS = int(os.environ.get("NB_STEPS", "30"))
SOURCE = os.environ.get("NB_SOURCE") or os.environ["LORA_JAX_SMOLLM2_GGUF"]
WORK = Path(tempfile.mkdtemp(prefix="lora_jax_nb01_"))"""),
    ("code", """# 1. The frozen base: Flax module + params pytree + tokenizer (GGUF, safetensors folder or hub id)
lm = load_model(SOURCE)
print(lm.config.model_type, lm.config.num_layers, "layers")"""),
    ("code", """# 2. Pick targets: the paper's Wq, Wv at r = 8 (presets, short names or regexes)
lcfg = LoraConfig(r=8, alpha=16, targets="qv")
lora, targets = lora_init(jax.random.PRNGKey(0), lm.params, lcfg, lora_modules(lm.config))
print(param_report(targets, lm.params))"""),
    ("code", """# 3. Data: an E2E-format sample the project writes itself, tokenized with the loss on the completion
from lora_jax.tasks.e2e import E2ETask
from lora_jax.tasks.formatting import encode_example, encode_prompt
from lora_jax.tasks.batching import TrainBatches
from lora_jax.tasks.sample import write_e2e_sample
write_e2e_sample(WORK / "data", n_train_mrs=64, n_test_mrs=4)
task = E2ETask(dataset=None, data_dir=str(WORK / "data"), train_file="train.csv", eval_file="test.csv", coco_metrics=False)
train = [encode_example(lm.tokenizer, ex, "plain", 64, task) for ex in task.load("train")]
batches = TrainBatches(train, batch_size=8, seed=0, buckets=[64], pad_id=lm.tokenizer.pad_id)"""),
    ("code", """# 4. One jitted pure train step that differentiates the LoRA tree only
from lora_jax.train.optimizer import build_optimizer
from lora_jax.train.step import make_train_step
ocfg = dict(name="adamw", lr=1e-3, warmup_steps=2, schedule="linear", b1=0.9, b2=0.999, eps=1e-6, weight_decay=0.01, grad_accum=1, grad_clip=None)
tx, _ = build_optimizer(ocfg, lora, STEPS)
step = make_train_step(lm.module, tx)
opt_state = tx.init(lora)"""),
    ("code", """# 5. Train a few steps
losses = []
for s in range(STEPS):
    lora, opt_state, m = step(lora, opt_state, lm.params, batches.batch_at(s), jax.random.PRNGKey(s))
    losses.append(float(m["loss"]))
print("loss", losses[0], "->", losses[-1])"""),
    ("code", """# 6. Decode (greedy, KV cache) with the adapter
from lora_jax.eval.decoding import generate
items = task.eval_groups(task.load("eval"))[:2]
prompts = [encode_prompt(lm.tokenizer, it.source, "plain", task) for it in items]
out = generate(lm.module, {"params": lm.params, "lora": lora}, prompts, cfg=lm.config,
               eos_token_id=lm.tokenizer.eos_id, pad_token_id=lm.tokenizer.pad_id, max_new_tokens=16)
for it, ids in zip(items, out):
    print(it.source, "->", lm.tokenizer.decode(ids))"""),
    ("code", """# 7. Merge W + s·A·B: same logits without the LoRA branch
ids = jnp.asarray([prompts[0]], jnp.int32)
with jax.default_matmul_precision("highest"):
    a = lm.module.apply({"params": lm.params, "lora": lora}, ids)[0]
    b = lm.module.apply({"params": merge(lm.params, lora, lora_modules(lm.config))}, ids)[0]
print("max |adapted - merged| =", float(jnp.abs(a - b).max()))"""),
    ("code", """# 8. Export to PEFT (adapter_config.json + adapter_model.safetensors) and read it back
from lora_jax.export import load_peft, save_peft
out_dir = save_peft(lora, lm.config, WORK / "peft_adapter")
print(sorted(p.name for p in out_dir.iterdir()))
back = load_peft(out_dir, lm.config)
print(jax.tree.map(np.shape, back) == jax.tree.map(np.shape, jax.tree.map(np.asarray, lora)))"""),
    ("code", """# 9. In PyTorch: peft.PeftModel.from_pretrained(transformers_model, out_dir) (see the README);
# for a run directory: python -m lora_jax.export RUN_DIR --format peft --out DIR
print((out_dir / "adapter_config.json").read_text()[:400])"""),
]

NB02 = [
    ("md", """# 02: the rank table
Reads a sweep's `runs.csv` (written by `python -m lora_jax.report`; default: the committed
`experiments/results/rank_table_cpu_smollm2/`), plots rank sensitivity per target set
(paper Table 6) and the metric against trainable parameters, with ±1 std over seeds where a
cell has several. `NB_RESULTS` points to another folder."""),
    ("code", """import os
from pathlib import Path
import pandas as pd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
ROOT = Path(os.environ.get("NB_ROOT", ".."))
RESULTS = Path(os.environ.get("NB_RESULTS", ROOT / "experiments/results/rank_table_cpu_smollm2"))
runs = pd.read_csv(RESULTS / "runs.csv")
print(len(runs), "runs;", list(runs.columns))"""),
    ("code", """ok = runs[runs["status"] == "ok"] if "status" in runs else runs
metric = os.environ.get("NB_METRIC", "eval.bleu")
cells = ok.groupby(["targets", "r"]).agg(mean=(metric, "mean"), std=(metric, "std"), n=(metric, "size"),
                                         params=("trainable", "first")).reset_index()
cells"""),
    ("code", """fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for t, g in cells.groupby("targets"):
    g = g.sort_values("r")
    axes[0].errorbar(g["r"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=t)
    axes[1].errorbar(g["params"], g["mean"], yerr=g["std"].fillna(0), marker="o", capsize=3, label=t)
axes[0].set_xscale("log", base=2); axes[0].set_xlabel("rank r"); axes[0].set_ylabel(metric)
axes[1].set_xscale("log"); axes[1].set_xlabel("trainable parameters"); axes[1].set_ylabel(metric)
axes[0].set_title("rank sensitivity (paper Table 6)"); axes[1].set_title(f"{metric} vs trainable parameters")
for ax in axes: ax.legend()
print("seeds per cell:", sorted(cells["n"].unique()))"""),
    ("code", """# the table as the paper prints it: rows = target sets, columns = r
cells.pivot(index="targets", columns="r", values="mean").round(4)"""),
]

NB03 = [
    ("md", """# 03: why does a small rank suffice? (paper §7.2, §7.3)
Reads the committed analysis `experiments/results/subspace_smollm2_e2e/` (written by
`python -m lora_jax.analyze`): φ heatmaps between the r=8 and r=64 adapters [P Fig. 3] and
between two seeds [P Fig. 4], and the amplification table [P Table 7]. `NB_ANALYSIS` points to
another analysis folder."""),
    ("code", """import os
from pathlib import Path
import numpy as np, pandas as pd
import matplotlib
matplotlib.use("Agg")
import matplotlib.pyplot as plt
ROOT = Path(os.environ.get("NB_ROOT", ".."))
A = Path(os.environ.get("NB_ANALYSIS", ROOT / "experiments/results/subspace_smollm2_e2e/analysis"))
grid = pd.read_csv(A / "phi_grid.csv"); summary = pd.read_csv(A / "phi_summary.csv")
print(sorted(grid["pair"].unique()))"""),
    ("code", """def heatmaps(pair):
    g = grid[grid["pair"] == pair]
    layers, mods = sorted(g["layer"].unique()), sorted(g["module"].unique(), key="qkvo".find)
    fig, axes = plt.subplots(len(mods), len(layers), figsize=(3 * len(layers), 2.5 * len(mods)), squeeze=False)
    for (mi, m) in enumerate(mods):
        for (li, l) in enumerate(layers):
            c = g[(g["module"] == m) & (g["layer"] == l)]
            M = c.pivot(index="i", columns="j", values="phi").to_numpy()
            im = axes[mi][li].imshow(M, vmin=0, vmax=1, origin="lower", aspect="auto",
                                     extent=(0.5, M.shape[1] + 0.5, 0.5, M.shape[0] + 0.5))
            axes[mi][li].set_title(f"W{m}, layer {l}")
    fig.colorbar(im, ax=axes); fig.suptitle(pair)
pairs = sorted(grid["pair"].unique())
for p in pairs: heatmaps(p)"""),
    ("code", """# φ of the top directions per pair and module (mean over layers); paper: φ(1,1) > 0.5 for r=8 vs r=64
# phi_out_*: the same for the output-space directions (B's, learned from zero)
summary.groupby(["pair", "module"])[["phi_1_1", "phi_k_k", "phi_mean", "phi_out_1_1", "phi_out_mean"]].mean().round(3)"""),
    ("code", """# per module: ‖ΔW‖_F, effective rank, and how far training moved A from its random init
mods = pd.read_csv(A / "modules.csv")
mods.groupby(["run", "module"])[["delta_fro", "effective_rank", "a_moved"]].mean().round(3)"""),
    ("code", """# amplification [P Table 7]: ‖UᵀWV‖_F for ΔW's, W's and random top-r directions, factor ‖ΔW‖/‖UᵀWV‖
amp = pd.read_csv(A / "amplification_summary.csv")
amp.round(3)"""),
]


def build(cells, name):
    nb = new_notebook(cells=[new_markdown_cell(s) if k == "md" else new_code_cell(s) for k, s in cells])
    for i, cell in enumerate(nb.cells):
        cell.id = f"cell-{i:02d}"  # stable ids: rebuilding does not change the files
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, HERE / name)


if __name__ == "__main__":
    build(NB01, "01_library_in_ten_cells.ipynb")
    build(NB02, "02_rank_table.ipynb")
    build(NB03, "03_subspace_analysis.ipynb")
