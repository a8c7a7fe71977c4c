#!/usr/bin/env python3
"""Full-size random learned files in the official checkpoint formats, for the page's memory and
speed measurements at 518 px (issue 17) — speed and memory do not depend on the values.

    /work/venv-ref/bin/python tests/reference/make_full_learned.py --out DIR \
        [--anomalyclip /work/ext/AnomalyCLIP] [--adaptclip /work/ext/AdaptCLIP]

Each official repository is imported from the path given (never vendored) and its classes are
built at the size of the published checkpoints (CLIP ViT-L/14@336: text width 768, 12 text blocks,
embedding 768; image size 518, patch 14):

    DIR/anomalyclip.pth  {"prompt_learner": …}  AnomalyCLIP_PromptLearner (--n_ctx 12 --t_n_ctx 4
                         --depth 9), saved as train.py saves it (ctx and token buffers in float16,
                         the deep prompts in float32, as make_learned_fixtures.py does)
    DIR/adaptclip.pth    {"textual_learner", "visual_learner", "pq_learner"}  TextualAdapter(n_ctx 12),
                         VisualAdapter(reduction 4), PQAdapter(context, mid_dim 128, 4 layers)

The values are random (seeded; the initialisation rules of the two fixture scripts). Convert them
for a checkpoint with `anoscope convert --learned DIR/anomalyclip.pth --model MODEL --out FILE`.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
SEED = 20261207
# The official constructors' arguments for ViT-L/14@336 (embed, image, vision layers, width,
# patch, context, vocab, text width, text heads, text layers).
L14_336 = (768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12)
RUN_SIZE = 518
DESIGN = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}


def anomalyclip(repo: Path, out: Path, g: torch.Generator) -> None:
    cwd = os.getcwd()
    sys.path.insert(0, str(repo))
    os.chdir(repo)  # the official tokenizer finds its vocabulary relative to the package
    try:
        from AnomalyCLIP_lib.AnomalyCLIP import AnomalyCLIP
        from prompt_ensemble import AnomalyCLIP_PromptLearner

        model = AnomalyCLIP(*L14_336, design_details=DESIGN).float().eval()
        learner = AnomalyCLIP_PromptLearner(model, DESIGN)
        published = learner.state_dict()
        for name, t in published.items():
            if name.startswith(("ctx_", "compound_prompts_text", "compound_prompt_projections")):
                t.copy_(torch.randn(t.shape, generator=g))
        for name, t in published.items():
            if not (name.startswith("compound_prompts_text") or name.startswith("tokenized_prompts")):
                published[name] = t.half()
        torch.save({"prompt_learner": published}, out / "anomalyclip.pth")
    finally:
        os.chdir(cwd)
        sys.path.remove(str(repo))


def adaptclip(repo: Path, out: Path, g: torch.Generator) -> None:
    sys.path.insert(0, str(repo))
    sys.path.insert(0, str(HERE))
    from adaptcliplib import adaptclip as A
    from adaptcliplib import PQAdapter, TextualAdapter, VisualAdapter
    from make_adaptclip_fixtures import randomize_

    model = A.AdaptCLIP(*L14_336).float().eval()
    patch = L14_336[4]
    textual = TextualAdapter(model, RUN_SIZE, 12)
    visual = VisualAdapter(RUN_SIZE, patch, input_dim=L14_336[0], reduction=4)
    pq = PQAdapter(RUN_SIZE, patch, context=True, input_dim=L14_336[0], mid_dim=128, layers_num=4)
    for m in (textual, visual, pq):
        randomize_(m, g)
    torch.save({"textual_learner": textual.state_dict(), "visual_learner": visual.state_dict(),
                "pq_learner": pq.state_dict()}, out / "adaptclip.pth")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", required=True, type=Path)
    ap.add_argument("--anomalyclip", type=Path, help="root of an extracted zqhang/AnomalyCLIP")
    ap.add_argument("--adaptclip", type=Path, help="root of an extracted gaobb/AdaptCLIP")
    args = ap.parse_args()
    if not (args.anomalyclip or args.adaptclip):
        ap.error("give --anomalyclip and/or --adaptclip")
    args.out.mkdir(parents=True, exist_ok=True)
    g = torch.Generator().manual_seed(SEED)
    with torch.no_grad():
        if args.anomalyclip:
            anomalyclip(args.anomalyclip.resolve(), args.out, g)
        if args.adaptclip:
            adaptclip(args.adaptclip.resolve(), args.out, g)
    for f in sorted(args.out.glob("*.pth")):
        print(f"{f}: {f.stat().st_size / 1e6:.1f} MB")


if __name__ == "__main__":
    main()
