#!/usr/bin/env python3
"""Reference fixtures for the learned-prompt mode AnomalyCLIP, from the official code itself.

The official repository is imported from a path given on the command line (never vendored):

    git --git-dir=<mirror of zqhang/AnomalyCLIP> archive HEAD AnomalyCLIP_lib prompt_ensemble.py \
        | tar -x -C /work/ext/AnomalyCLIP
    /work/venv-ref/bin/python tests/reference/make_learned_fixtures.py --anomalyclip /work/ext/AnomalyCLIP

(the official package also imports `thop` and `pkg_resources`; see README.md).

It builds a tiny random CLIP of the same family with the official classes (24 vision blocks so
that `DAPM_replace(20)` covers blocks 6-24 as in ViT-L/14; width 32 with 4 heads; a 10-block
text tower 8 wide so the 8 deep prompts of `--depth 9` enter blocks 1-8 and the last block has none),
random learned parameters in the official `AnomalyCLIP_PromptLearner` (`--n_ctx 12 --t_n_ctx 4
--depth 9`), saves them as the official checkpoints are saved (`torch.save({"prompt_learner":
state_dict})`), loads them back as `test.py` does, and runs `test.py`'s zero-shot inference
(`--features_list 24 --sigma 4`) at 42 px, a size other than the checkpoint's 28 px (so the
position embeddings are resized 4x4 -> 6x6).

Writes:

    tests/fixtures/anomalyclip_tiny/{open_clip_config.json, open_clip_model.safetensors}  (float16)
    tests/fixtures/anomalyclip_tiny/learned.pth           the prompt learner, official format
    tests/fixtures/anomalyclip_tiny_expected.safetensors  inputs and official outputs

Expected tensors: `pixel_values` [2,3,42,42] (normalised), `text_features` [2,P] (normal,
anomalous; L2-normalised), `image_features` [2,P] (raw global feature), `patch_tokens` [2,36,P]
(layer-24 DPAM tokens, raw), `maps_raw` [2,42,42] (before the Gaussian), `maps` [2,42,42] (after
it), `scores` [2].

The checkpoint is also AdaptCLIP's fixture model (make_adaptclip_fixtures.py reads it; run this
script first): its whole token-embedding table is random, as AdaptCLIP's static prompt ensemble
reads many rows. Deterministic: fixed seeds, CPU, float32.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIX = ROOT / "tests" / "fixtures"
CKPT = FIX / "anomalyclip_tiny"
OUT = FIX / "anomalyclip_tiny_expected.safetensors"

SEED = 20261206
CKPT_SIZE, PATCH, RUN_SIZE = 28, 7, 42
V_WIDTH, V_HEADS, V_LAYERS = 32, 4, 24
T_WIDTH, T_HEADS, T_LAYERS = 8, 2, 10
EMBED = 16
LEARNED_STD = 1.0
DESIGN = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--anomalyclip", required=True, help="root of an extracted zqhang/AnomalyCLIP")
    args = ap.parse_args()
    repo = Path(args.anomalyclip).resolve()
    sys.path.insert(0, str(repo))
    os.chdir(repo)  # the official tokenizer finds its vocabulary relative to the package
    torch.set_num_threads(2)
    torch.manual_seed(SEED)
    np.random.seed(SEED)

    import AnomalyCLIP_lib  # noqa: E402
    from AnomalyCLIP_lib.AnomalyCLIP import AnomalyCLIP, VisionTransformer  # noqa: E402
    from prompt_ensemble import AnomalyCLIP_PromptLearner  # noqa: E402
    from scipy.ndimage import gaussian_filter  # noqa: E402
    from safetensors.torch import save_file, load_file  # noqa: E402

    # The official constructor derives the vision heads as width // 64; a tiny width needs its
    # own head count, so the image tower is rebuilt with the official class (the text heads are
    # an argument).
    model = AnomalyCLIP(EMBED, CKPT_SIZE, V_LAYERS, 64, PATCH, 77, 49408, T_WIDTH, T_HEADS, T_LAYERS,
                        design_details=DESIGN)
    model.visual = VisionTransformer(CKPT_SIZE, PATCH, V_WIDTH, V_LAYERS, V_HEADS, EMBED)

    # Random values for every parameter (LayerNorms included), rounded through float16 so the
    # f16 checkpoint written below is exactly what ran.
    g = torch.Generator().manual_seed(SEED)
    sd = model.state_dict()
    for name, t in sd.items():
        if name == "logit_scale":
            t.fill_(float(np.log(1 / 0.07)))
            continue
        z = torch.randn(t.shape, generator=g)
        if name.endswith(("ln_1.weight", "ln_2.weight", "ln_pre.weight", "ln_post.weight", "ln_final.weight")):
            v = 1.0 + 0.1 * z
        elif name.endswith("bias"):
            v = 0.05 * z
        elif name in ("token_embedding.weight", "visual.class_embedding", "visual.positional_embedding", "positional_embedding"):
            v = 0.5 * z
        elif name == "visual.conv1.weight":
            v = z / np.sqrt(t[0].numel())
        elif t.dim() == 2:
            fan_in = t.shape[0] if name in ("visual.proj", "text_projection") else t.shape[1]
            v = z / np.sqrt(fan_in)
        else:
            raise SystemExit(f"no initialisation for {name} {tuple(t.shape)}")
        t.copy_(v.half().float())
    model.eval()

    CKPT.mkdir(parents=True, exist_ok=True)
    cfg = {
        "model_cfg": {
            "embed_dim": EMBED,
            "quick_gelu": True,
            "vision_cfg": {"image_size": CKPT_SIZE, "layers": V_LAYERS, "width": V_WIDTH,
                           "head_width": V_WIDTH // V_HEADS, "patch_size": PATCH},
            "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": T_WIDTH, "heads": T_HEADS,
                         "layers": T_LAYERS},
        },
        "preprocess_cfg": {"mean": [0.48145466, 0.4578275, 0.40821073],
                           "std": [0.26862954, 0.26130258, 0.27577711]},
    }
    (CKPT / "open_clip_config.json").write_text(json.dumps(cfg, indent=2) + "\n")
    weights = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    save_file(weights, str(CKPT / "open_clip_model.safetensors"))
    back = load_file(str(CKPT / "open_clip_model.safetensors"))
    model.load_state_dict({k: v.float() for k, v in back.items()}, strict=True)

    # Random learned parameters in the official prompt learner, saved as the published
    # checkpoints are: ctx and the token buffers in float16 (what CUDA training stores), the deep
    # prompts in float32 (so that their `.half()` rounding in the text blocks matters).
    learner = AnomalyCLIP_PromptLearner(model.to("cpu"), DESIGN)
    lsd = learner.state_dict()
    for name, t in lsd.items():
        if name.startswith(("ctx_", "compound_prompts_text", "compound_prompt_projections")):
            t.copy_(LEARNED_STD * torch.randn(t.shape, generator=g))
    published = learner.state_dict()  # an OrderedDict with _metadata, as train.py saves it
    for name, t in published.items():
        if not (name.startswith("compound_prompts_text") or name.startswith("tokenized_prompts")):
            published[name] = t.half()
    torch.save({"prompt_learner": published}, CKPT / "learned.pth")

    # test.py from here on (CPU, float32).
    checkpoint = torch.load(CKPT / "learned.pth")
    learner = AnomalyCLIP_PromptLearner(model.to("cpu"), DESIGN)
    learner.load_state_dict(checkpoint["prompt_learner"])
    model.visual.DAPM_replace(DPAM_layer=20)
    with torch.no_grad():
        prompts, tokenized_prompts, compound_prompts_text = learner(cls_id=None)
        text_features = model.encode_text_learn(prompts, tokenized_prompts, compound_prompts_text).float()
        text_features = torch.stack(torch.chunk(text_features, dim=0, chunks=2), dim=1)
        text_features = text_features / text_features.norm(dim=-1, keepdim=True)

        image = torch.randn((2, 3, RUN_SIZE, RUN_SIZE), generator=g)
        globals_, tokens, scores, maps_raw, smoothed = [], [], [], [], []
        for one in image.split(1):  # test.py runs batches of one image
            image_features, patch_features = model.encode_image(one, [24], DPAM_layer=20)
            globals_.append(image_features.clone())
            tokens.append(patch_features[0][:, 1:, :])
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text_probs = image_features @ text_features.permute(0, 2, 1)
            text_probs = (text_probs / 0.07).softmax(-1)
            scores.append(text_probs[:, 0, 1])
            maps = []
            for patch_feature in patch_features:
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                similarity_map = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], RUN_SIZE)
                maps.append((similarity_map[..., 1] + 1 - similarity_map[..., 0]) / 2.0)
            anomaly_map = torch.stack(maps).sum(dim=0)
            maps_raw.append(anomaly_map)
            smoothed.append(torch.stack([torch.from_numpy(gaussian_filter(m, sigma=4)) for m in anomaly_map.cpu()]))
        raw_global = torch.cat(globals_)
        scores = torch.cat(scores)
        maps_raw = torch.cat(maps_raw)
        smoothed = torch.cat(smoothed)
        patch_tokens = torch.cat(tokens)

    assert model.visual.positional_embedding.shape[0] == (RUN_SIZE // PATCH) ** 2 + 1  # resized in place
    out = {
        "pixel_values": image,
        "text_features": text_features[0].contiguous(),
        "image_features": raw_global.contiguous(),
        "patch_tokens": patch_tokens.contiguous(),
        "maps_raw": maps_raw.float().contiguous(),
        "maps": smoothed.float().contiguous(),
        "scores": scores.float().contiguous(),
    }
    save_file(out, str(OUT))
    print("scores", scores.tolist())
    print("map range", float(smoothed.min()), float(smoothed.max()))
    print("text cos", float(text_features[0, 0] @ text_features[0, 1]))
    total = sum(p.stat().st_size for p in [OUT, *CKPT.iterdir()])
    print(f"wrote {OUT.relative_to(ROOT)} and {CKPT.relative_to(ROOT)}/ ({total / 1e6:.2f} MB)")


if __name__ == "__main__":
    main()
