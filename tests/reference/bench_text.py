#!/usr/bin/env python3
"""PyTorch's time for one prompt through a checkpoint's text tower (tokenizer included).

The peer for the browser benchmark's `--text` figure (tests/bench/browser_bench.mjs):
transformers `CLIPTextModelWithProjection` + `CLIPTokenizerFast` (the real BPE vocabulary,
written out as tests/reference/tokens.py does), eval mode, inference mode,
`torch.set_num_threads(T)`; 2 warm-up runs, then the median of N.

Usage:
  /work/venv-ref/bin/python tests/reference/bench_text.py --checkpoint DIR [--threads 1,2] [--runs 20]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

PROMPT = "a photo of a damaged bottle."


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--threads", default="1,2")
    p.add_argument("--runs", type=int, default=20)
    a = p.parse_args(argv)

    import torch
    from transformers import CLIPTextModelWithProjection

    import tempfile
    from pathlib import Path

    from transformers import CLIPTokenizerFast

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from tokens import write_vocab_files  # noqa: E402

    vocab_dir = Path(tempfile.mkdtemp(prefix="anoscope-bench-text-"))
    vocab_file, merges_file = write_vocab_files(vocab_dir)
    tok = CLIPTokenizerFast(vocab_file=str(vocab_file), merges_file=str(merges_file), pad_token="<|endoftext|>")
    model = CLIPTextModelWithProjection.from_pretrained(a.checkpoint, torch_dtype=torch.float32).eval()
    for t in [int(x) for x in a.threads.split(",")]:
        torch.set_num_threads(t)

        def once():
            ids = tok([PROMPT], padding="max_length", max_length=77, return_tensors="pt")
            with torch.inference_mode():
                return model(input_ids=ids["input_ids"]).text_embeds

        for _ in range(2):
            once()
        times = []
        for _ in range(a.runs):
            t0 = time.perf_counter()
            once()
            times.append((time.perf_counter() - t0) * 1000)
        print("pytorch text tower, one prompt (tokenizer included), %d thread(s): %.1f ms" % (t, statistics.median(times)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
