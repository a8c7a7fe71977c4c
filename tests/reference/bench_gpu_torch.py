#!/usr/bin/env python3
"""GPU peer for `anoscope bench --backend gpu`: PyTorch (CUDA) on the same model.

The full-size ViT-B/16 image tower (transformers `CLIPVisionModelWithProjection`,
config from bench_peers.MODEL_CFG, random weights -- speed does not depend on
the values), float32 with TF32 off (as our WGSL kernels: f32 arithmetic), 224 px,
eval mode, `torch.inference_mode()`.  For each batch size: 3 warm-up calls, then
--runs timed calls (CUDA events, synchronised), median, reported per image.
Also the card's plain-f32 matmul rate (4096^3, TF32 off) as the ceiling that
GFLOP/s figures are read against.

Usage (on a machine with CUDA):
  python3 tests/reference/bench_gpu_torch.py [--batches 1,8,32] [--runs 20] [--json FILE]
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_peers import MODEL_CFG, build_torch_model  # noqa: E402

# 35.1 GFLOP per image at 224 px (2 FLOP per multiply-add), as `anoscope bench` counts.
GFLOP_PER_IMAGE = 35.1


def timed(fn, runs: int) -> float:
    import torch

    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(runs):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        torch.cuda.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--runs", type=int, default=20)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("no CUDA device", file=sys.stderr)
        return 1
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device("cuda")
    out = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "encode": []}
    n = 4096
    a = torch.randn(n, n, device=dev)
    b = torch.randn(n, n, device=dev)
    ms = timed(lambda: a @ b, args.runs)
    out["matmul_f32_gflops"] = 2 * n**3 / (ms * 1e-3) / 1e9
    print(f"{out['device']}: f32 matmul {n}^3 (TF32 off) {out['matmul_f32_gflops']:.0f} GFLOP/s")
    model, _ = build_torch_model(0)
    model = model.to(dev)
    size = MODEL_CFG["image_size"]
    for bs in [int(x) for x in args.batches.split(",")]:
        x = torch.randn(bs, 3, size, size, device=dev)
        with torch.inference_mode():
            ms = timed(lambda: model(pixel_values=x).image_embeds, args.runs)
        per = ms / bs
        row = {
            "batch": bs,
            "ms_per_image": per,
            "images_per_s": 1e3 / per,
            "gflops": GFLOP_PER_IMAGE / (per * 1e-3),
        }
        out["encode"].append(row)
        print(
            f"pytorch cuda f32 ViT-B/16 encode, batch {bs}: {per:.2f} ms per image "
            f"({row['images_per_s']:.0f}/s, {row['gflops']:.0f} GFLOP/s)"
        )
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
