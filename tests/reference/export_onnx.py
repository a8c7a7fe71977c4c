#!/usr/bin/env python3
"""Exports the image tower of a Hugging Face layout CLIP checkpoint to ONNX.

Used by the browser benchmark (tests/bench/browser_bench.mjs) so onnxruntime-web
runs the *same* checkpoint as anoscope's wasm build (e.g. the random full-size
ViT-B/16 from `anoscope random-weights --arch vit-b-16`).  The graph takes
`pixel_values` [1,3,S,S] (f32) and returns `image_embeds` [1,P], the same
function anoscope's `embedImage` computes, so the benchmark can also check that
both runtimes agree.  The export itself is bench_peers.write_image_embeds_onnx.

Usage:
  /work/venv-ref/bin/python tests/reference/export_onnx.py --checkpoint DIR --out FILE.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import time

def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True, help="folder with config.json + model.safetensors")
    p.add_argument("--out", required=True, help="the .onnx file to write")
    a = p.parse_args(argv)

    import torch
    from transformers import CLIPVisionModelWithProjection

    if not os.path.isfile(os.path.join(a.checkpoint, "config.json")):
        p.error("%s has no config.json (a Hugging Face layout checkpoint is needed)" % a.checkpoint)
    model = CLIPVisionModelWithProjection.from_pretrained(a.checkpoint, torch_dtype=torch.float32).eval()
    size = model.config.image_size

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    from bench_peers import write_image_embeds_onnx  # noqa: E402

    t0 = time.perf_counter()
    write_image_embeds_onnx(model, torch.zeros(1, 3, size, size), a.out)
    print("exported %s (%d px) in %.1f s" % (a.out, size, time.perf_counter() - t0), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
