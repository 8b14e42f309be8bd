#!/usr/bin/env bash
# The GPU check (issue 12 part 8, issue 20 part 5), on a CUDA machine, in under 9 minutes:
#   1. the tests marked `gpu` (bf16 autocast training with fp32 masters, QLoRA with bitsandbytes on CUDA,
#      packed rows through sdpa / flash attention, generation), at most 4 minutes;
#   2. ~3 minutes of training throughput, tuneforge vs TRL's SFTTrainer, LoRA on a ~0.5B Qwen2-shaped model
#      built with from_config in bf16 (bench/gpu_throughput.py), printing tokens/s and the ratio;
#   3. train.fused_loss on vs off under bf16 autocast: peak CUDA memory and step time of a 2-layer hidden-896
#      Llama at vocab 32k and 151,936, batch 8 x 1024 (bench/fused_loss.py, ~1 minute);
#   4. with 2+ GPUs: 2-rank DDP/FSDP2 over NCCL against one process (bench/gpu_ranks.py; skipped on one GPU).
# Figures and logs go to $OUT when it is set (gpu_check.log, gpu_tests.xml, gpu_throughput.json, fused_loss.json).
#
#   bench/gpu_check.sh             # on a CUDA machine
#   bench/gpu_check.sh --dry-run   # anywhere: the gpu tests skip, the throughput code runs a tiny model on CPU
set -uo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
[ -x "$PY" ] || PY=python3
DRY=()
if [ "${1:-}" = "--dry-run" ]; then DRY=(--dry-run); fi
if [ -n "${OUT:-}" ]; then
  mkdir -p "$OUT"
  exec > >(tee -a "$OUT/gpu_check.log") 2>&1
fi
status=0
started=$(date +%s)

echo "== device"
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv 2>/dev/null || echo "no nvidia-smi"
"$PY" -c 'import torch; c = torch.cuda.is_available(); print("torch", torch.__version__, "cuda", torch.version.cuda,
  torch.cuda.get_device_name(0) if c else "no CUDA device", "bf16" if c and torch.cuda.is_bf16_supported() else "")'

echo "== tests marked gpu"
junit=()
if [ -n "${OUT:-}" ]; then junit=(--junitxml "$OUT/gpu_tests.xml"); fi
timeout 240 "$PY" -m pytest -m gpu tests/test_gpu.py tests/test_fused_loss.py -q -rs -p no:cacheprovider "${junit[@]}" || status=1

echo "== training throughput: tuneforge vs TRL"
seconds=75
if [ ${#DRY[@]} -gt 0 ]; then seconds=5; fi
timeout 300 "$PY" bench/gpu_throughput.py "${DRY[@]}" --seconds "$seconds" ${OUT:+--out "$OUT"} || status=1

echo "== fused linear + cross-entropy (train.fused_loss) on vs off: peak memory and step time"
if [ ${#DRY[@]} -gt 0 ]; then
  timeout 120 "$PY" bench/fused_loss.py --quick ${OUT:+--out "$OUT"} || status=1
else
  timeout 180 "$PY" bench/fused_loss.py --device cuda --repeats 1 --warmup 1 --steps 3 ${OUT:+--out "$OUT"} || status=1
fi

echo "== 2 ranks over NCCL (DDP LoRA, FSDP2 full) vs 1 process, when the machine has 2 GPUs"
if [ ${#DRY[@]} -gt 0 ]; then
  echo "dry run: skipped here (bench/gpu_ranks.py --dry-run runs it on CPU with gloo, ~75 s)"
else
  timeout 300 "$PY" bench/gpu_ranks.py ${OUT:+--out "$OUT"} || status=1
fi

echo "== gpu_check: $([ $status -eq 0 ] && echo passed || echo FAILED) in $(( $(date +%s) - started )) s"
exit $status
