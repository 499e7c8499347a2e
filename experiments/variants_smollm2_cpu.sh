#!/usr/bin/env bash
# LoRA variants at a CPU budget on SmolLM2-135M-Instruct x E2E: plain LoRA, DoRA, PiSSA, OLoRA
# and LoRA+ (conf/variant/), q,v at r = 8, each at the learning rate its own validation loss
# picks from a 3-value grid (sweeps/hydra/variants.yaml is the full grid: r in {1, 4, 64} x
# {q,v ; all linear}; this is the slice one 2-core machine runs in about an hour).
#
#   bash experiments/variants_smollm2_cpu.sh run       # both parts (resumable: rerun to resume)
#   bash experiments/variants_smollm2_cpu.sh report    # the table, experiments/results/...
#
# Budget and data as experiments/study_fair_smollm2.sh (its COMMON settings): 80 AdamW steps of
# batch 4, sequences cut at 64 tokens, warmup 8 then linear decay, α = 16 (scale 2), validation
# loss on 256 held-out training pairs (the pick), test metrics on the first 100 distinct test MRs
# (greedy, 40 new tokens). One seed (0): the table says which differences this cannot resolve.
# LR grids: {1e-3, 3e-3, 1e-2} (the fair study's LoRA grid) for LoRA, DoRA, PiSSA, OLoRA; LoRA+
# trains B at 16x optim.lr, so its grid is one step lower, {3e-4, 1e-3, 3e-3}.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
REC=${REC:-experiments/results/variants_smollm2_cpu/records}
export LORA_JAX_SMOLLM2_GGUF=${LORA_JAX_SMOLLM2_GGUF:-$(../shared/bin/get-smollm2)}
export LORA_JAX_E2E_DIR=${LORA_JAX_E2E_DIR:-../shared/data/e2e}

COMMON=(experiment=e2e_offline_smollm2 sweep_name=variants_cpu
  trainer.batch_size=4 trainer.max_steps=80 trainer.log_every=10 trainer.eval_before=false
  trainer.progress=false trainer.ckpt_every=40 trainer.resume=true trainer.val_examples=256
  optim.warmup_steps=8 task.max_len=64 task.max_eval_items=100 task.decode.num_beams=1
  task.decode.max_new_tokens=40 task.decode.batch_size=50 data.packing=true data.pack=step
  lora=qv lora.r=8 lora.alpha=16 seed=0 hydra/launcher=packed hydra.launcher.pack_size=3)

case ${1:?give run or report} in
run)
  $PY -m lora_jax.train -m "${COMMON[@]}" variant=lora,pissa,olora,dora \
    optim.lr=1e-3,3e-3,1e-2 hydra.sweep.dir=$REC/p1
  $PY -m lora_jax.train -m "${COMMON[@]}" variant=loraplus optim.lr=3e-4,1e-3,3e-3 \
    hydra.sweep.dir=$REC/loraplus ;;
report)
  OUT=experiments/results/variants_smollm2_cpu
  $PY -m lora_jax.report $REC --select-by val_loss --rows variant --cols r --out $OUT
  $PY -m lora_jax.report $REC --select-by val_loss --rows variant --cols r --metric rouge_l \
    --out $OUT/rouge_l --no-plots ;;
*)
  echo "unknown part $1 (run report)" >&2; exit 2 ;;
esac
