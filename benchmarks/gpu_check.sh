#!/usr/bin/env bash
# GPU check (single GPU, < 5 minutes): CUDA device, AMP, LoRA and throughput figures.
#   bash benchmarks/gpu_check.sh            # writes benchmarks/results/gpu_check.md
set -euo pipefail
cd "$(dirname "$0")/.."
python - <<'PY'
import json, os, platform, time, torch
assert torch.cuda.is_available(), "no CUDA device visible"
from recbole_llm_mtl.quick_start import run
from recbole_llm_mtl.text.encoder import SharedLanguageModel

name = torch.cuda.get_device_name(0)
out = {"gpu": name, "torch": torch.__version__}
# 1. encoding throughput of the shared model on the GPU
lm = SharedLanguageModel().to("cuda")
texts = [l.split("\t")[1] for l in open("dataset/amazon/amazon.item", encoding="utf-8").read().splitlines()[1:]]
lm.encode(texts[:512], show_progress=False); torch.cuda.synchronize()
t = time.time(); lm.encode(texts, show_progress=False); torch.cuda.synchronize()
out["encode_items_per_s"] = len(texts) / (time.time() - t)
# 2. LLMMTL, frozen encoder, AMP on, 3 epochs
r = run("LLMMTL", "amazon", config_dict={"epochs": 3, "enable_amp": True, "show_progress": False,
                                         "text_cache_dir": "saved/gpu_check_cache"})
out["frozen_amp_seconds_per_epoch"] = r["fit_seconds"] / max(r["epochs"], 1)
out["frozen_amp_test"] = r["test_result"]
# 3. LoRA fine-tuning of the shared model, 1 epoch, AMP on
r = run("LLMMTL", "amazon", config_dict={"epochs": 1, "llm_mode": "lora", "enable_amp": True,
                                         "train_batch_size": 256, "show_progress": False,
                                         "text_cache_dir": "saved/gpu_check_cache"})
out["lora_amp_seconds_per_epoch"] = r["fit_seconds"]
out["lora_amp_test"] = r["test_result"]
out["peak_gpu_mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
os.makedirs("benchmarks/results", exist_ok=True)
with open("benchmarks/results/gpu_check.md", "w") as f:
    f.write(f"# GPU check on {name}\n\nCommand: `bash benchmarks/gpu_check.sh`\n\n```json\n{json.dumps(out, indent=1)}\n```\n")
print(json.dumps(out, indent=1))
PY
