"""Benchmark: the memory of vLLM's CPU engine, and the KV cache `rlvr doctor` gives it.

Runs in the vLLM environment (scripts/setup_vllm.sh), on the bundled SmolLM2-135M with a LoRA policy:

    .venv-vllm/bin/python bench/bench_vllm_memory.py [--kv-mb 256] [--record bench/results/vllm_memory.json]

1. The engine's runtime: the peak-RSS rise of starting the engine with a fixed KV cache (--kv-mb)
   and sampling 64 completions, less its weight copy and that KV cache. This is the constant
   `rlvr.sampling.vllm.ENGINE_RUNTIME_BYTES` the doctor adds.
2. The doctor's plan, in a second process: `rlvr doctor` with `sampling.backend=vllm` on the main
   job's settings: the memory it measured free, the KV cache it gave the engine, the engine's parts,
   the update's peak, and the process's peak RSS, against what the doctor said the run needs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

GB = 2**30


def engine_runtime(kv_mb: int) -> dict:
    import torch

    from rlvr.memory import available_memory, peak_rise, reset_peak_rss
    from rlvr.models import load_model
    from rlvr.sampling import SamplingParams
    from rlvr.sampling.vllm import VLLMSampler
    from bench_sampler import make_prompts  # noqa: E402 - same prompts as the sampler benchmark

    model, tok = load_model("smollm2-135m", dtype="fp32")
    prompts = make_prompts(tok, 8)
    before = reset_peak_rss()
    available = available_memory()
    sampler = VLLMSampler(model, tok, vllm_max_model_length=256, vllm_kv_cache_memory_bytes=kv_mb * 2**20, seed=0)
    t0 = time.perf_counter()
    params = SamplingParams(max_new_tokens=64, temperature=1.0, top_p=0.95, stop_token_ids=())
    sampler.generate(prompts, params, num_samples=8, generator=torch.Generator().manual_seed(0))
    rise = peak_rise(before)
    parts = sampler.engine_memory()
    weights, kv = parts["weights"], parts["kv_cache"]
    return {"kv_cache_bytes": kv, "weight_copy_bytes": weights, "peak_rss_rise_bytes": rise,
            "runtime_bytes": rise - weights - kv, "available_before_bytes": available,
            "seconds": time.perf_counter() - t0}


def doctor_plan() -> dict:
    """`rlvr doctor` on the main job with the vLLM backend, its doctor.json and its peak RSS."""
    import resource

    from rlvr.config import load_config
    from rlvr.doctor import diagnose
    from rlvr.memory import available_memory

    cfg = load_config(Path(__file__).parents[1] / "configs" / "main.yaml",
                      ["sampling.backend=vllm", "model.name=smollm2-135m"])
    available = available_memory()
    d = diagnose(cfg, num_prompts=8)
    m = d.memory
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return {"available_bytes": available, "doctor_available_bytes": m.available_bytes,
            "engine_bytes": m.engine_bytes, "update_peak_bytes": m.peak_bytes, "total_bytes": m.total_bytes,
            "findings": [(f.severity, f.message) for f in d.findings],
            "process_peak_rss_bytes": peak}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--kv-mb", type=int, default=256)
    ap.add_argument("--record", type=Path)
    ap.add_argument("--part", choices=["runtime", "doctor"])
    args = ap.parse_args()
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    if args.part:
        out = engine_runtime(args.kv_mb) if args.part == "runtime" else doctor_plan()
        print("RESULT " + json.dumps(out))
        return
    from bench_sampler import machine_info

    record = {"settings": {"kv_mb": args.kv_mb, "model": "smollm2-135m fp32, LoRA r16 (doctor: configs/main.yaml)"},
              "machine": machine_info(), "results": {}}
    for part in ("runtime", "doctor"):  # each in its own process: its own peak RSS
        out = subprocess.run([sys.executable, __file__, "--part", part, "--kv-mb", str(args.kv_mb)],
                             capture_output=True, text=True, cwd=Path(__file__).parent)
        lines = [l for l in out.stdout.splitlines() if l.startswith("RESULT ")]
        if out.returncode or not lines:
            sys.exit(f"{part} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
        record["results"][part] = json.loads(lines[-1][7:])
        print(part, json.dumps(record["results"][part], indent=1))
    if args.record:
        args.record.write_text(json.dumps(record, indent=1) + "\n")


if __name__ == "__main__":
    main()
