#!/usr/bin/env bash
# A short E2E run on the real Gemma 3 270M (Q4_K_M GGUF, dequantized to fp32) on the 2-core CPU:
# BLEU before training (trainer.eval_before) and after 60 AdamW steps of batch 4, and the loss
# chunking measured at the experiment's own batch (8 x 128) with and without trainer.loss_chunk.
#   bash experiments/e2e_gemma3_cpu.sh run      # the training record -> $OUT/run (no checkpoints)
#   bash experiments/e2e_gemma3_cpu.sh chunk    # 6 steps with loss_chunk=256, 6 without
# Gemma Terms of Use: the model file is never committed (path from ../shared/bin/get-gemma3).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
OUT=${OUT:-experiments/results/e2e_gemma3_cpu}
export LORA_JAX_GEMMA3_GGUF=${LORA_JAX_GEMMA3_GGUF:-$(../shared/bin/get-gemma3)}
export LORA_JAX_E2E_DIR=${LORA_JAX_E2E_DIR:-../shared/data/e2e}
case ${1:?give run or chunk} in
run)
  $PY -m lora_jax.train experiment=e2e_offline_gemma3 trainer.batch_size=4 trainer.max_steps=60 \
    trainer.log_every=10 trainer.progress=false trainer.eval_before=true \
    trainer.val_examples=128 optim.lr=1e-3 optim.warmup_steps=6 task.max_len=64 \
    task.max_eval_items=50 task.decode.num_beams=1 task.decode.max_new_tokens=40 \
    task.decode.batch_size=25 hydra.run.dir=runs/e2e_gemma3_cpu
  mkdir -p $OUT/run  # the record without checkpoints
  tar -C runs/e2e_gemma3_cpu --exclude=checkpoints --exclude='*.lock' -cf - . | tar -C $OUT/run -xf - ;;
chunk)
  for chunk in 256 null; do
    uptime
    /usr/bin/time -f "loss_chunk=$chunk: peak RSS %M KiB, wall %e s" \
      $PY -m lora_jax.train experiment=e2e_offline_gemma3 trainer.max_steps=6 trainer.log_every=1 \
      trainer.progress=false trainer.eval_before=false task.max_eval_items=2 \
      task.decode.max_new_tokens=2 trainer.val_examples=0 trainer.loss_chunk=$chunk \
      hydra.run.dir=/tmp/gemma3_chunk_$chunk
  done ;;
esac
