#!/usr/bin/env bash
# All GPU measurements of docs/BENCHMARKS.md, in one command per phase (device time is scarce).
#   benchmarks/gpu_session.sh 1   ceilings, kernels, BERT-base, GPU-vs-CPU check, 4-layer 7B slice
#   benchmarks/gpu_session.sh 2   full Llama-2-7B shape with speedups, then baselines
#   benchmarks/gpu_session.sh 3   7B with the neuron path exercised (paper allocation, widths rounded
#                                 to multiples of 8) and the baselines' prune times
#   benchmarks/gpu_session.sh 4   BERT-base with the default neuron_multiple=8 rounding, Kwon on BERT-base
#                                 (random labels), the compiled decode step at 7B, a 4-layer Kwon slice
#   benchmarks/gpu_session.sh 5   compiled forward at BERT-base (default and greedy allocation), Kwon at the
#                                 full 7B shape, STAT's default at 7B, the compiled decode step for greedy
#   benchmarks/gpu_session.sh 6   the compiled 7B decode step and BERT-base forward with Inductor freezing
#                                 (q/k/v and gate/up GEMMs concatenated)
#   benchmarks/gpu_session.sh 7   the fused pivot step end to end (issue 14 item 1): 7B and BERT-base with
#                                 the torch step and the fused step (same kept units?), 7B at the
#                                 former default (residual + share) and at the new auto default (loss + greedy)
#   benchmarks/gpu_session.sh 8   the same after the fused step's block size became 128 (7B former default
#                                 and BERT-base; kept units compared with phase 7's records)
#   benchmarks/gpu_session.sh 10  Grams from the upper blocks (issue 14 item 1): the GPU Gram test, host
#                                 profiles of BERT-base prunes (benchmarks/profile_prune.py), 7B former
#                                 default with and without the bench's per-Gram profiling syncs, BERT-base
#   benchmarks/gpu_session.sh 11  one kernel per pivot step, chunks run to the next trailing update (one
#                                 graph per chunk start), no host syncs per batch in the walk: GPU tests,
#                                 BERT-base in fresh processes (cold and warm Triton cache) and profiled,
#                                 the pivot-step microbenchmark, 7B former default and decoder default
#   benchmarks/gpu_session.sh 13  Triton warmed up on a background thread (no gain: reverted), one-wave column
#                                 programs: BERT-base in fresh processes against the tree in $OLD (PYTHONPATH;
#                                 A/B on one machine, alternating), the pivot-step microbenchmark against it, 7B
#   benchmarks/gpu_session.sh 14  the final tree of issue 14 item 1: GPU tests, BERT-base in 3 fresh processes,
#                                 7B former default (with and without per-Gram profiling), 7B decoder default
#   benchmarks/gpu_session.sh 15  repeated prunes in one process without cProfile (start-up paid once):
#                                 BERT-base × 4, 7B former default × 2
#   benchmarks/gpu_session.sh 16  Triton's library hash primed on a background thread (no gain: not kept):
#                                 BERT-base in fresh processes, alternating with the tree in $OLD (4 pairs)
#   benchmarks/gpu_session.sh 17  the walk without cuDNN attention (no gain: not kept): GPU tests, BERT-base in
#                                 fresh processes alternating with the tree in $OLD (4 pairs), host profile;
#                                 pruned BERT-base (STAT's encoder default, magnitude) after load_pruned at
#                                 8–512 × 128 tokens, eager, graph and compiled, with kernel time by kind
#   benchmarks/gpu_session.sh 18  BERT-base with the tree in $A9 (kept units against phase 14's on another machine);
#                                 FLAP's and SliceGPT's pruned 7B after load_pruned: forward eager, graph and
#                                 compiled, kernel time by kind (one dense process serves both)
#   benchmarks/gpu_session.sh 19  the pivot kernels' Σ d written out again (a shared Triton helper had moved kept
#                                 units): GPU tests, BERT-base × 3 and the 7B former default (kept units against
#                                 phase 14's and phase 18's records)
#   benchmarks/gpu_session.sh 20  FLAP's and SliceGPT's pruned 7B after load_pruned: decode paths, stock generate
#                                 at batch 1 and 16, and with a static cache (compiled by transformers)
#   benchmarks/gpu_session.sh 21  after a change to the GPU path: the GPU tests (one reruns BERT-base against phase
#                                 14's record), BERT-base and the 7B former default against the records of phase 14
#                                 (bench --same-as: same kept units and output error?)
#   benchmarks/gpu_session.sh 22  Triton's key remembered across processes: GPU tests (the phase-21 check included),
#                                 BERT-base in fresh processes with the memo off and on (alternating, 4 pairs,
#                                 kept units against phase 14's), host and kernel profiles of BERT-base prunes
#   benchmarks/gpu_session.sh 23  statprune's bytecode compiled first (as pip install does; the tree arrives without it),
#                                 BERT-base in fresh processes (Triton key memo on × 4, off × 2), host profile with
#                                 raw pstats, kernel profile, the 7B former default against phase 14's record
#   benchmarks/gpu_session.sh 24  BERT-base in fresh processes with bytecode for every imported module (the lent machine's
#                                 site-packages has none; a pip install compiles it): where bytecode comes from, then
#                                 the Triton key memo on × 5 (the first writes the bytecode), off × 2, host profile
#   benchmarks/gpu_session.sh 26  speculative factorizations (one host read each), overrun chunks rounded to 64 steps,
#                                 Linears assembled without an init: GPU tests, BERT-base in alternating fresh processes
#                                 with the previous tree (.xfer/old, carried) and this one, kept units against phase
#                                 14's; steady-state host and kernel profiles; the 7B former default, old and new
#   benchmarks/gpu_session.sh 28  the walk's batches run as one forward where a layer is small (BERT-base: 8 → 1):
#                                 BERT-base in alternating fresh processes with the previous tree (.xfer/old, carried),
#                                 kept units against phase 14's; later prunes in one process at four group limits;
#                                 a host profile; the 7B former default (no groups there) against phase 14's record
#   benchmarks/gpu_session.sh 29  after phase 28, chunk graphs captured without torch.cuda.graph's device sync and
#                                 cache flush: GPU tests; later prunes in one process cycling the group limit
#                                 (none, 32768, 65536 tokens); fresh processes alternating with the tree before
#                                 grouping (.xfer/old); a host profile; the 7B former default against phase 14's
#   benchmarks/gpu_session.sh 30  the committed tree of phase 29 plus the group limit's memory term: GPU tests, BERT-base
#                                 in 6 fresh processes and 4 later prunes in one, the 7B former default (kept units
#                                 against phase 14's throughout)
#   (phase 25, trailing updates on the unpivoted columns only, ran at commit bfc4163, whose script has it;
#    not kept: docs/BENCHMARKS.md §3e)
#   (phase 27, torch's CPU threads capped at 4 during a GPU prune, ran at commit 162642b, whose script has it;
#    not kept: docs/BENCHMARKS.md §3f)
#   benchmarks/gpu_session.sh 12  phases 1 and 2, most important first, each step bounded so that the whole
#                                 fits in DEADLINE seconds (what is left out is logged as skipped)
# Run from the repository root. Records go to $REC (default benchmarks/results/gpu) and, after every
# step, into $OUT/records.tgz (the device tool returns at most 8 files from $OUT).
# Uses the machine's python3 (torch + transformers); statprune runs from the source tree.
set -uo pipefail
PHASE=${1:-1}
OUT=${OUT:-benchmarks/results/gpu}
mkdir -p "$OUT"
export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
PY=${PYTHON:-python3}
REC=${REC:-$OUT}
mkdir -p "$REC"
SP="$PY -m statprune.cli bench --device cuda --out $REC"
DEADLINE=${DEADLINE:-100000}
pack() { [[ $REC == "$OUT" ]] || tar czf "$OUT/records.tgz" -C "$REC" .; }
step() { pack; echo; echo "=== $* ($(date -u +%FT%TZ), ${SECONDS}s)"; }
left() { echo $((DEADLINE - SECONDS)); }

BERT="--shape bert-base --sparsity 0.5 --calib-size 512 --seq-len 128 --batch-size 64 --dtype bfloat16"
LLAMA="--shape llama-2-7b --sparsity 0.3 --calib-size 128 --seq-len 2048 --batch-size 8 --dtype bfloat16"
SHARE="--opt error_norm=residual --opt allocation=share"  # the STAT default before 2026-12-01
run() { local t=$1; shift; (( $(left) > 30 )) || return 0; timeout $(( $(left) < t ? $(left) : t )) "$@"; }

if [[ $PHASE == 1 || $PHASE == 12 ]]; then
  step environment
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,clocks.mem,power.limit --format=csv
  $PY -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name())"
  nproc; free -g | head -2
  step micro; run 120 $PY benchmarks/micro.py "$REC/micro.json" cuda
  step bert-base; run 120 $SP $BERT --speed --name bert-base-stat-s0.5
fi
if [[ $PHASE == 2 || $PHASE == 12 ]]; then
  step 7b-full; run 360 $SP $LLAMA --speed --name llama-2-7b-stat-s0.3
fi
if [[ $PHASE == 1 || $PHASE == 12 ]]; then
  step gpu-vs-cpu; run 120 $SP --shape bert-base --layers 3 --sparsity 0.5 --calib-size 128 --seq-len 128 \
    --batch-size 64 --dtype float32 --compare-cpu --name bert-base-L3-gpu-vs-cpu
  step bert-base-multiple8; run 60 $SP $BERT --speed --opt neuron_multiple=8 --name bert-base-stat-s0.5-m8
  step bert-base-sketch; run 60 $SP $BERT --opt sketch=gaussian --opt sketch_ratio=0.1 --name bert-base-stat-s0.5-gauss0.1
  step pytest-gpu; run 60 $PY -m pytest -q -m gpu tests/unit/test_bench.py -p no:cacheprovider
fi
if [[ $PHASE == 2 || $PHASE == 12 ]]; then
  for m in magnitude slicegpt "kwon --opt batch_size=4"; do
    step "7b-$m"; run 240 $SP $LLAMA --method $m --name "llama-2-7b-${m%% *}-s0.3"
  done
fi
if [[ $PHASE == 3 ]]; then
  step 7b-paper-m8; run 200 $SP $LLAMA --speed --opt allocation=paper --opt neuron_multiple=8 \
    --name llama-2-7b-stat-s0.3-paper-m8
  step 7b-magnitude; run 60 $SP $LLAMA --method magnitude --speed --name llama-2-7b-magnitude-s0.3
  step 7b-slicegpt; run 120 $SP $LLAMA --method slicegpt --name llama-2-7b-slicegpt-s0.3
  step 7b-kwon; run 150 $SP $LLAMA --method kwon --opt batch_size=4 --name llama-2-7b-kwon-s0.3
  step bert-magnitude; run 40 $SP $BERT --method magnitude --name bert-base-magnitude-s0.5
fi
if [[ $PHASE == 4 ]]; then
  step environment
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv
  step bert-base-m8; run 90 $SP $BERT --speed --name bert-base-stat-s0.5-m8round
  step bert-base-kwon; run 120 $SP $BERT --method kwon --num-labels 2 --opt progress=true --name bert-base-kwon-s0.5
  step 7b-compiled-decode; run 330 $SP --shape llama-2-7b --sparsity 0.3 --calib-size 32 --seq-len 512 \
    --batch-size 8 --dtype bfloat16 --speed --compile --name llama-2-7b-stat-s0.3-compiled
  step 7b-slice-kwon; run 150 $SP $LLAMA --layers 4 --method kwon --opt batch_size=4 --opt progress=true \
    --name llama-2-7b-L4-kwon-s0.3
fi
if [[ $PHASE == 5 ]]; then
  step bert-base-compiled; run 100 $SP $BERT --speed --compile --name bert-base-stat-s0.5-compiled
  step bert-base-greedy-compiled; run 100 $SP $BERT --speed --compile --opt allocation=greedy \
    --name bert-base-stat-s0.5-greedy-compiled
  step 7b-kwon; run 300 $SP $LLAMA --method kwon --opt batch_size=4 --opt progress=true --name llama-2-7b-kwon-s0.3
  step 7b-default; run 160 $SP $LLAMA --name llama-2-7b-stat-s0.3-default
  step 7b-greedy-compiled-decode; run 330 $SP --shape llama-2-7b --sparsity 0.3 --calib-size 32 --seq-len 512 \
    --batch-size 8 --dtype bfloat16 --speed --compile --opt allocation=greedy --name llama-2-7b-stat-s0.3-greedy-compiled
fi
if [[ $PHASE == 6 ]]; then
  step 7b-frozen-decode; run 380 $SP --shape llama-2-7b --sparsity 0.3 --calib-size 32 --seq-len 512 \
    --batch-size 8 --dtype bfloat16 --speed --compile --freeze --name llama-2-7b-stat-s0.3-compiled-frozen
  step bert-base-frozen; run 100 $SP $BERT --speed --compile --freeze --name bert-base-stat-s0.5-compiled-frozen
fi
if [[ $PHASE == 7 ]]; then
  step environment
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv
  $PY -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__)"
  step 7b-slice-torch-step; STATPRUNE_TRITON=0 run 60 $SP $LLAMA --layers 4 $SHARE --name llama-2-7b-L4-stat-share-torchstep
  step 7b-slice-fused; run 60 $SP $LLAMA --layers 4 $SHARE --name llama-2-7b-L4-stat-share-fused
  step bert-torch-step; STATPRUNE_TRITON=0 run 40 $SP $BERT --name bert-base-stat-s0.5-torchstep
  step bert-fused; run 40 $SP $BERT --name bert-base-stat-s0.5-fused
  step 7b-share-fused; run 150 $SP $LLAMA $SHARE --name llama-2-7b-stat-s0.3-share-fused
  step 7b-auto; run 180 $SP $LLAMA --name llama-2-7b-stat-s0.3-auto
fi
if [[ $PHASE == 8 ]]; then
  step bert-fused-b128; run 40 $SP $BERT --name bert-base-stat-s0.5-fused-b128
  step 7b-share-fused-b128; run 150 $SP $LLAMA $SHARE --name llama-2-7b-stat-s0.3-share-fused-b128
  step 7b-auto-b128; run 180 $SP $LLAMA --name llama-2-7b-stat-s0.3-auto-b128
fi
if [[ $PHASE == 10 ]]; then
  step environment
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.sm,power.limit --format=csv
  step pytest-gram; run 60 $PY -m pytest -q -m gpu tests/unit/test_gram.py -p no:cacheprovider
  step bert-profile; run 90 $PY benchmarks/profile_prune.py --shape bert-base --runs 3 --out "$REC/profile_bert.json"
  step bert-noprofile; run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-upper-noprof
  step 7b-share-upper; run 150 $SP $LLAMA $SHARE --name llama-2-7b-stat-s0.3-share-upper
  step 7b-share-upper-noprofile; run 150 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-upper-noprof
  step 7b-auto-upper-noprofile; run 180 $SP $LLAMA --opt profile=false --name llama-2-7b-stat-s0.3-auto-upper-noprof
fi
if [[ $PHASE == 11 ]]; then
  step pytest-gpu; run 90 $PY -m pytest -q -m gpu tests/unit/test_gram.py tests/unit/test_bench.py -p no:cacheprovider
  step bert-cold; run 60 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-onekernel-cold
  step bert-warm; run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-onekernel
  step bert-profile; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 2 --out "$REC/profile_bert_onekernel.json"
  step pivot-step; run 120 $PY benchmarks/pivot_step.py --sizes 768,3072,11008 --out "$REC/pivot_step_onekernel.json"
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-onekernel
  step 7b-share-profiled; run 120 $SP $LLAMA $SHARE --name llama-2-7b-stat-s0.3-share-onekernel-profiled
  step 7b-auto; run 150 $SP $LLAMA --opt profile=false --name llama-2-7b-stat-s0.3-auto-onekernel
fi
if [[ $PHASE == 13 ]]; then
  step pytest-gpu; run 90 $PY -m pytest -q -m gpu tests/unit/test_gram.py tests/unit/test_bench.py -p no:cacheprovider | tail -3
  for r in 1 2 3; do
    step "bert-old-$r"; PYTHONPATH=$OLD:$PYTHONPATH run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-old-$r"
    step "bert-new-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-warmup-$r"
  done
  step pivot-step-old; PYTHONPATH=$OLD:$PYTHONPATH run 90 $PY benchmarks/pivot_step.py --sizes 3072,11008 --no-max-steps --out "$REC/pivot_step_old.json"
  step pivot-step-new; run 90 $PY benchmarks/pivot_step.py --sizes 3072,11008 --no-max-steps --out "$REC/pivot_step_wave.json"
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-wave
  step 7b-auto; run 150 $SP $LLAMA --opt profile=false --name llama-2-7b-stat-s0.3-auto-wave
fi
if [[ $PHASE == 14 ]]; then
  step pytest-gpu; run 90 $PY -m pytest -q -m gpu tests/unit/test_gram.py tests/unit/test_id.py tests/unit/test_bench.py -p no:cacheprovider | tail -3
  for r in 1 2 3; do
    step "bert-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-final-$r"
  done
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-final
  step 7b-share-profiled; run 120 $SP $LLAMA $SHARE --name llama-2-7b-stat-s0.3-share-final-profiled
  step 7b-auto; run 150 $SP $LLAMA --opt profile=false --name llama-2-7b-stat-s0.3-auto-final
fi
if [[ $PHASE == 15 ]]; then
  step bert-in-process; run 90 $PY benchmarks/profile_prune.py --shape bert-base --runs 4 --top 0 --out "$REC/inprocess_bert.json"
  step 7b-in-process; run 200 $PY benchmarks/profile_prune.py --shape llama-2-7b --sparsity 0.3 --calib-size 128 \
    --seq-len 2048 --batch-size 8 --runs 2 --top 0 --opt error_norm=residual --opt allocation=share \
    --out "$REC/inprocess_7b_share.json"
fi
if [[ $PHASE == 16 ]]; then
  step bert-compile; run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-prime-0  # Triton compiles
  for r in 1 2 3 4; do
    step "bert-old-$r"; PYTHONPATH=$OLD:$PYTHONPATH run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-noprime-$r"
    step "bert-new-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-prime-$r"
  done
fi
if [[ $PHASE == 17 ]]; then
  step pytest-gpu; run 90 $PY -m pytest -q -m gpu tests/unit/test_stat_walk.py tests/unit/test_id.py -p no:cacheprovider | tail -3
  step bert-compile; run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-nocudnn-0  # Triton compiles
  for r in 1 2 3 4; do
    step "bert-old-$r"; PYTHONPATH=$OLD:$PYTHONPATH run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-cudnn-$r"
    step "bert-new-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-nocudnn-$r"
  done
  step bert-profile; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 2 --out "$REC/profile_bert_nocudnn.json"
  PS_BERT="--shape bert-base --sparsity 0.5 --calib-size 512 --seq-len 128 --batches 8,32,128,512 --compile"
  step bert-speed-stat; run 240 $PY benchmarks/pruned_speed.py all $PS_BERT --repeats 2 --work /tmp/pb \
    --out "$REC/pruned_speed_bert_share.json"
  step bert-speed-magnitude; run 150 $PY benchmarks/pruned_speed.py all $PS_BERT --method magnitude --repeats 1 \
    --work /tmp/pm --out "$REC/pruned_speed_bert_magnitude_sizes.json"
fi
if [[ $PHASE == 18 ]]; then
  step bert-a9cf782; PYTHONPATH=$A9:$PYTHONPATH run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-a9cf782
  PS_7B="--shape llama-2-7b --sparsity 0.3 --calib-size 32 --seq-len 2048 --batches 8,32 --no-generate"
  for m in flap slicegpt; do
    step "7b-$m-make"; run 120 $PY benchmarks/pruned_speed.py make $PS_7B --method $m --work /tmp/$m \
      --out "$REC/pruned_speed_7b_${m}_made.json"
  done
  step 7b-dense; run 150 $PY benchmarks/pruned_speed.py time --model random:llama-2-7b --batches 8,32 --compile \
    --no-generate --json "$REC/speed_7b_dense_compiled.json"
  for m in flap slicegpt; do
    step "7b-$m-time"; run 150 $PY benchmarks/pruned_speed.py time --model /tmp/$m/pruned --batches 8,32 --compile \
      --no-generate --json "$REC/speed_7b_${m}_compiled.json"
  done
fi
if [[ $PHASE == 19 ]]; then
  step pytest-gpu; run 120 $PY -m pytest -q -m gpu tests/unit/test_pivot_kernel.py tests/unit/test_id.py -p no:cacheprovider | tail -3
  for r in 1 2 3; do
    step "bert-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-inline-$r"
  done
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-inline
fi
if [[ $PHASE == 20 ]]; then
  PS_7B="--shape llama-2-7b --sparsity 0.3 --calib-size 32 --seq-len 2048 --batches 32 --no-generate"
  for m in flap slicegpt; do
    step "7b-$m-make"; run 100 $PY benchmarks/pruned_speed.py make $PS_7B --method $m --work /tmp/$m
  done
  # --batches 8 --compile: no compiled forward (that is at 32 × 128), the static-cache generate only
  step 7b-dense; run 150 $PY benchmarks/pruned_speed.py time --model random:llama-2-7b --batches 8 --compile \
    --json "$REC/decode_7b_dense.json"
  for m in flap slicegpt; do
    step "7b-$m-time"; run 150 $PY benchmarks/pruned_speed.py time --model /tmp/$m/pruned --batches 8 --compile \
      --json "$REC/decode_7b_${m}.json"
  done
fi
if [[ $PHASE == 21 ]]; then
  REF=benchmarks/results/h200-2026-12-01
  step pytest-gpu; run 120 $PY -m pytest -q -m gpu tests/unit/test_bench.py tests/unit/test_pivot_kernel.py -p no:cacheprovider | tail -3
  step bert; run 60 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-check \
    --same-as $REF/bert-base-stat-s0.5-final-2.json
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-check \
    --same-as $REF/llama-2-7b-stat-s0.3-share-final.json
fi
if [[ $PHASE == 22 ]]; then
  REF=benchmarks/results/h200-2026-12-01/bert-base-stat-s0.5-final-2.json
  step pytest-gpu; run 150 $PY -m pytest -q -m gpu tests/unit/test_bench.py tests/unit/test_pivot_kernel.py -p no:cacheprovider | tail -3
  step pytest-key; run 60 $PY -m pytest -q tests/unit/test_triton_key.py -p no:cacheprovider | tail -3
  step bert-compile; run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-memo-0 --same-as $REF
  for r in 1 2 3 4; do
    step "bert-off-$r"; STATPRUNE_TRITON_KEY_MEMO=0 run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-nomemo-$r" --same-as $REF
    step "bert-on-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-memo-$r" --same-as $REF
  done
  step bert-profile; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 2 --top 40 --out "$REC/profile_bert_memo.json"
  step bert-kernels; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 3 --top 0 --kernels 40 \
    --out "$REC/kernels_bert.json"
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-check \
    --same-as benchmarks/results/h200-2026-12-01/llama-2-7b-stat-s0.3-share-final.json
fi
if [[ $PHASE == 23 ]]; then
  REF=benchmarks/results/h200-2026-12-01
  step bytecode; $PY -c "import sys, os; print('dont_write_bytecode', sys.flags.dont_write_bytecode)"
  ls statprune/__pycache__ 2>/dev/null | head -2; $PY -m compileall -q statprune && echo compiled
  for r in 0 1 2 3 4 5 6; do  # 0: Triton compiles its kernels and the key is stored
    if (( r == 3 || r == 6 )); then memo=0 name=nomemo-pyc; else memo=1 name=memo-pyc; fi
    step "bert-$name-$r"; STATPRUNE_TRITON_KEY_MEMO=$memo run 40 $SP $BERT --opt profile=false \
      --name "bert-base-stat-s0.5-$name-$r" --same-as $REF/bert-base-stat-s0.5-final-2.json
  done
  step bert-profile; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 2 --top 60 \
    --pstats "$REC/pstats_bert" --out "$REC/profile_bert_pyc.json" | grep -v "^ "
  step bert-kernels; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 3 --top 0 --kernels 40 \
    --out "$REC/kernels_bert.json"
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-check \
    --same-as $REF/llama-2-7b-stat-s0.3-share-final.json
fi
if [[ $PHASE == 24 ]]; then
  REF=benchmarks/results/h200-2026-12-01/bert-base-stat-s0.5-final-2.json
  step bytecode; $PY -c "import os, sys, triton, transformers
d = os.path.dirname(triton.__file__)
print('dont_write_bytecode', sys.flags.dont_write_bytecode, 'PYTHONDONTWRITEBYTECODE', os.environ.get('PYTHONDONTWRITEBYTECODE'))
print('triton dir writable', os.access(d, os.W_OK), 'pyc files', sum(f.endswith('.pyc') for _, _, fs in os.walk(d) for f in fs))
d = os.path.dirname(transformers.__file__)
print('transformers pyc files', sum(f.endswith('.pyc') for _, _, fs in os.walk(d) for f in fs))"
  export PYTHONPYCACHEPREFIX=/tmp/pycache; unset PYTHONDONTWRITEBYTECODE
  for r in 0 1 2 3 4 5 6; do  # 0: writes the bytecode, Triton compiles its kernels and the key is stored
    if (( r == 3 || r == 6 )); then memo=0 name=nomemo-bytecode; else memo=1 name=memo-bytecode; fi
    step "bert-$name-$r"; STATPRUNE_TRITON_KEY_MEMO=$memo run 40 $SP $BERT --opt profile=false \
      --name "bert-base-stat-s0.5-$name-$r" --same-as $REF
  done
  step bert-profile; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 2 --top 60 \
    --pstats "$REC/pstats_bert" --out "$REC/profile_bert_bytecode.json" | grep -v "^ "
fi
if [[ $PHASE == 26 ]]; then
  REF=benchmarks/results/h200-2026-12-01
  OLD=$PWD/.xfer/old  # the tree before this change (git archive), first on PYTHONPATH for the "old" runs
  step pytest-gpu; run 150 $PY -m pytest -q -m gpu tests/unit/test_bench.py tests/unit/test_pivot_kernel.py \
    tests/unit/test_id.py -p no:cacheprovider | tail -3
  step bert-warm; run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-spec-0 --same-as $REF/bert-base-stat-s0.5-final-2.json
  for r in 1 2 3 4 5; do
    step "bert-old-$r"; PYTHONPATH=$OLD:$PYTHONPATH run 40 $SP $BERT --opt profile=false \
      --name "bert-base-stat-s0.5-prespec-$r" --same-as $REF/bert-base-stat-s0.5-final-2.json
    step "bert-new-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-spec-$r" \
      --same-as $REF/bert-base-stat-s0.5-final-2.json
  done
  step bert-inprocess-old; PYTHONPATH=$OLD:$PYTHONPATH run 60 $PY benchmarks/profile_prune.py --shape bert-base \
    --runs 4 --top 0 --out "$REC/inprocess_bert_prespec.json"
  step bert-inprocess-new; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 4 --top 0 \
    --out "$REC/inprocess_bert_spec.json"
  step bert-profile; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 2 --top 60 \
    --pstats "$REC/pstats_spec" --out "$REC/profile_bert_spec.json" | grep -v "^ "
  step bert-kernels; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 3 --top 0 --kernels 40 \
    --out "$REC/kernels_bert_spec.json"
  step 7b-share-new; run 120 $SP $LLAMA $SHARE --opt profile=false --name llama-2-7b-stat-s0.3-share-spec \
    --same-as $REF/llama-2-7b-stat-s0.3-share-final.json
  step 7b-share-old; PYTHONPATH=$OLD:$PYTHONPATH run 120 $SP $LLAMA $SHARE --opt profile=false \
    --name llama-2-7b-stat-s0.3-share-prespec --same-as $REF/llama-2-7b-stat-s0.3-share-final.json
fi
# Helpers of phases 28–30. ab_bert N OLD NEW: N pairs of fresh BERT-base processes alternating the tree in
# .xfer/old (first on PYTHONPATH) with this one, records named bert-base-stat-s0.5-OLD<r> / -NEW<r>.
SAME_BERT="--same-as benchmarks/results/h200-2026-12-01/bert-base-stat-s0.5-final-2.json"
ab_bert() {
  for r in $(seq 1 "$1"); do
    step "bert-old-$r"; PYTHONPATH=$PWD/.xfer/old:$PYTHONPATH run 40 $SP $BERT --opt profile=false \
      --name "bert-base-stat-s0.5-$2$r" $SAME_BERT
    step "bert-new-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-$3$r" $SAME_BERT
  done
}
host_profile() {  # host_profile TAG: cProfile of a first and a later prune in one process
  step bert-profile; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 2 --top 60 \
    --pstats "$REC/pstats_$1" --out "$REC/profile_bert_$1.json" | grep -v "^ "
}
check_7b() {  # check_7b TAG: the 7B former default against phase 14's record
  step 7b-share; run 120 $SP $LLAMA $SHARE --opt profile=false --name "llama-2-7b-stat-s0.3-share-$1" \
    --same-as benchmarks/results/h200-2026-12-01/llama-2-7b-stat-s0.3-share-final.json
}
gpu_tests() { step pytest-gpu; run 150 $PY -m pytest -q -m gpu tests/unit/test_bench.py tests/unit/test_id.py -p no:cacheprovider | tail -3; }
if [[ $PHASE == 28 ]]; then
  step bert-warm; run 40 $SP $BERT --opt profile=false --name bert-base-stat-s0.5-group-0 $SAME_BERT
  ab_bert 5 pregroup- group-
  for gt in 0 16384 32768 65536; do
    step "bert-inprocess-$gt"; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 4 --top 0 \
      --group-tokens $gt --out "$REC/inprocess_bert_group$gt.json"
  done
  host_profile group
  check_7b group
fi
if [[ $PHASE == 29 ]]; then
  gpu_tests
  step bert-inprocess-cycle; run 90 $PY benchmarks/profile_prune.py --shape bert-base --runs 10 --top 0 \
    --group-tokens 65536,0,32768,65536 --out "$REC/inprocess_bert_cycle.json"
  ab_bert 4 pregroup-b capture-
  host_profile capture
  check_7b capture
fi
if [[ $PHASE == 30 ]]; then
  gpu_tests
  for r in 1 2 3 4 5 6; do
    step "bert-$r"; run 40 $SP $BERT --opt profile=false --name "bert-base-stat-s0.5-walkgroup-$r" $SAME_BERT
  done
  step bert-inprocess; run 60 $PY benchmarks/profile_prune.py --shape bert-base --runs 5 --top 0 \
    --out "$REC/inprocess_bert_walkgroup.json"
  check_7b walkgroup
fi
if [[ $PHASE == 1 || $PHASE == 12 ]]; then
  step 7b-slice; run 120 $SP $LLAMA --layers 4 --speed --name llama-2-7b-L4-stat-s0.3
fi
pack
