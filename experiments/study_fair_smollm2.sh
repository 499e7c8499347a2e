#!/usr/bin/env bash
# The fair rank x target study on SmolLM2-135M-Instruct x E2E (CPU budget), in resumable parts.
#
#   bash experiments/study_fair_smollm2.sh p1_lora     # seed 0: 4 target sets x 5 ranks x 3 lrs
#   bash experiments/study_fair_smollm2.sh p1_full     # seed 0: full fine-tuning x 3 lrs
#   bash experiments/study_fair_smollm2.sh p1_matched  # seed 0: 9 matched-budget cells x 3 lrs
#   bash experiments/study_fair_smollm2.sh p2          # seeds 1, 2 of every cell at its lr
#   bash experiments/study_fair_smollm2.sh report      # the tables (experiments/results/...)
#
# Each part is one Hydra multirun under $STUDY (default multirun/study_fair); rerunning a part
# resumes it (trainer.resume=true: finished jobs are kept, the others restart from their newest
# checkpoint). The lr of each cell is chosen on seed 0's validation loss (a held-out slice of the
# training file, never the test set); seeds 1 and 2 then run at that lr only (phase 2), as the
# study's README says. Budget: 80 AdamW steps of batch 8 (640 of the training pairs), sequences
# cut at 64 tokens, lr warmed up over 8 steps then decayed linearly, α = 16 at every rank (scale
# α/r), kaiming init; validation loss on 256 held-out pairs; test: the first 100 of the 630
# distinct test MRs, greedy decoding of at most 40 new tokens.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
STUDY=${STUDY:-multirun/study_fair}
export LORA_JAX_SMOLLM2_GGUF=${LORA_JAX_SMOLLM2_GGUF:-$(../shared/bin/get-smollm2)}
export LORA_JAX_E2E_DIR=${LORA_JAX_E2E_DIR:-../shared/data/e2e}

COMMON=(experiment=e2e_offline_smollm2 sweep_name=study_fair
  trainer.batch_size=8 trainer.max_steps=80 trainer.log_every=10 trainer.eval_before=false
  trainer.progress=false trainer.ckpt_every=40 trainer.resume=true trainer.val_examples=256
  optim.warmup_steps=8 task.max_len=64 task.max_eval_items=100 task.decode.num_beams=1
  task.decode.max_new_tokens=40 task.decode.batch_size=50)
LORA_LRS=3e-4,1e-3,3e-3
FULL_LRS=1e-5,3e-5,1e-4

part=${1:?give a part: p1_lora p1_full p1_matched p2 report}
case $part in
p1_lora)
  $PY -m lora_jax.train -m "${COMMON[@]}" hydra/launcher=packed lora=qv,attn,mlp,all \
    lora.r=1,2,4,8,64 lora.alpha=16 lora.init=kaiming optim.lr=$LORA_LRS seed=0 \
    hydra.sweep.dir=$STUDY/p1_lora ;;
p1_full)
  $PY -m lora_jax.train -m "${COMMON[@]}" method=full optim.lr=$FULL_LRS seed=0 \
    hydra.sweep.dir=$STUDY/p1_full ;;
p1_matched)
  $PY -m lora_jax.train -m "${COMMON[@]}" hydra/launcher=packed \
    lora=matched/attn_r13,matched/mlp_r8,matched/all_r5,matched/attn_r26,matched/mlp_r16,matched/all_r10,matched/attn_r53,matched/mlp_r32,matched/all_r20 \
    optim.lr=$LORA_LRS seed=0 hydra.sweep.dir=$STUDY/p1_matched ;;
*)
  echo "unknown part $part (p1_lora p1_full p1_matched p2 report)" >&2; exit 2 ;;
esac
