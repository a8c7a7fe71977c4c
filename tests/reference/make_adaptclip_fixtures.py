#!/usr/bin/env python3
"""Reference fixtures for anoscope's AdaptCLIP mode, from the official code.

The official repository (github gaobb/AdaptCLIP, GPL-2) is NOT vendored: pass the
path of an extracted copy (outside this repository), e.g.

    git --git-dir=<mirror>/gaobb+AdaptCLIP/repo archive HEAD | tar -x -C /work/ext/AdaptCLIP
    /work/venv-ref/bin/python tests/reference/make_adaptclip_fixtures.py --adaptclip /work/ext/AdaptCLIP

The official modules are imported from there and run as its `test.py` runs them
with the published arguments of `scripts/test_adaptclip.sh`
(`--features_list 6 12 18 24 --n_ctx 12 --vl_reduction 4 --pq_context
--visual_learner --textual_learner --pq_learner`, sigma 4, fusion
`average_mean`, `DAPM_replace(DPAM_layer=20)`), on a tiny random CLIP of the
same family and random learned parameters.  Definitions of every output are in
tests/reference/ADAPTCLIP.md.

The tiny CLIP is AnomalyCLIP's fixture model, tests/fixtures/anomalyclip_tiny/ (float16), written
by make_learned_fixtures.py (run that first): one checkpoint serves both learned modes' fixtures.

Writes

    tests/fixtures/adaptclip_tiny/learned.pth          (torch.save, as the official train.py)
    tests/fixtures/adaptclip_tiny_expected.safetensors

Deterministic: fixed seeds, CPU, float32, 2 threads.  Expected values are
computed from the checkpoint re-loaded from disk (f16 weights cast to f32) and
the learned file re-loaded with torch.load, as test.py loads it.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
FIX = ROOT / "tests" / "fixtures"
CKPT_DIR = FIX / "anomalyclip_tiny"  # shared with make_learned_fixtures.py, which writes it
LEARNED_DIR = FIX / "adaptclip_tiny"
OUT = FIX / "adaptclip_tiny_expected.safetensors"

SEED = 20261206
torch.set_num_threads(2)
torch.set_default_dtype(torch.float32)

# The tiny CLIP (make_learned_fixtures.py's): ViT-L/14@336's family (24 vision blocks,
# quick_gelu, OpenAI key names) at a small width.  The checkpoint's grid is 4x4 (28 px, patch 7);
# the fixture runs at 70 px (grid 10x10), so the position embeddings are resized.
VISION = dict(width=32, layers=24, heads=4, patch=7, image=28)
TEXT = dict(width=8, layers=10, heads=2, vocab=49408, context=77)
EMBED_DIM = 16
RUN_SIZE = 70
BATCH = 2
SHOTS = 2

# Published arguments (scripts/test_adaptclip.sh, test.py defaults).
FEATURES_LIST = [6, 12, 18, 24]
DPAM_LAYER = 20
N_CTX = 12
VL_REDUCTION = 4
PQ_MID_DIM = 16  # published: 128 (scaled down with the width; a parameter of the file)
PQ_CONTEXT = True
SIGMA = 4
FUSION = "average_mean"

OPENCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": EMBED_DIM,
        "quick_gelu": True,
        "vision_cfg": {
            "image_size": VISION["image"],
            "layers": VISION["layers"],
            "width": VISION["width"],
            "head_width": VISION["width"] // VISION["heads"],
            "mlp_ratio": 4.0,
            "patch_size": VISION["patch"],
        },
        "text_cfg": {
            "context_length": TEXT["context"],
            "vocab_size": TEXT["vocab"],
            "width": TEXT["width"],
            "heads": TEXT["heads"],
            "layers": TEXT["layers"],
        },
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}


def randomize_(module: nn.Module, g: torch.Generator) -> None:
    """Overwrite every parameter and BatchNorm statistic with non-trivial values.

    LayerNorm / BatchNorm weight 1 + 0.1 N, biases 0.1 N, embeddings and the
    learned contexts 0.5 N, matrices / convolutions N(0, 1/fan_in) ([in, out]
    projections N(0, 1/in)), BatchNorm running_mean 0.1 N and running_var
    U(0.5, 1.5), logit_scale ln(1/0.07) + 0.1 N.
    """

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    seen = set()
    with torch.no_grad():
        for mname, mod in module.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                if id(p) in seen:  # the PQ adapter shares one local/global adapter
                    continue
                seen.add(id(p))
                shape = p.shape
                if isinstance(mod, (nn.LayerNorm, nn.BatchNorm1d, nn.BatchNorm2d)):
                    v = 1.0 + 0.1 * randn(shape) if pname == "weight" else 0.1 * randn(shape)
                elif pname == "logit_scale":
                    v = math.log(1 / 0.07) + 0.1 * randn(shape)
                elif pname in ("class_embedding", "positional_embedding", "ctx_pos", "ctx_neg") or isinstance(
                    mod, nn.Embedding
                ):
                    v = 0.5 * randn(shape)
                elif pname.endswith("bias"):
                    v = 0.1 * randn(shape)
                elif isinstance(mod, nn.ConvTranspose2d) and pname == "weight":  # [in, out, kh, kw]
                    v = randn(shape) / math.sqrt(shape[0])
                elif isinstance(mod, (nn.Linear, nn.Conv2d)) and pname == "weight":
                    v = randn(shape) / math.sqrt(math.prod(shape[1:]))
                elif pname == "in_proj_weight":
                    v = randn(shape) / math.sqrt(shape[1])
                elif pname in ("proj", "text_projection"):
                    v = randn(shape) / math.sqrt(shape[0])
                else:
                    raise ValueError(f"no init rule for {mname}.{pname} {tuple(shape)}")
                p.copy_(v)
            if isinstance(mod, (nn.BatchNorm1d, nn.BatchNorm2d)):
                mod.running_mean.copy_(0.1 * randn(mod.running_mean.shape))
                mod.running_var.copy_(0.5 + torch.rand(mod.running_var.shape, generator=g))


def build_tiny_clip(adaptclip_mod):
    """The official AdaptCLIP model class at the tiny size, vision heads set to 4.

    AdaptCLIP derives the vision heads as width // 64 (0 at width 32): the image
    tower is rebuilt with the official VisionTransformer class and 4 heads, so
    that the per-head split of the v-v attention is exercised, as in ViT-L (16
    heads)."""
    model = adaptclip_mod.AdaptCLIP(
        EMBED_DIM,
        VISION["image"],
        VISION["layers"],
        64,  # any width with heads >= 1; the image tower is replaced below
        VISION["patch"],
        TEXT["context"],
        TEXT["vocab"],
        TEXT["width"],
        TEXT["heads"],
        TEXT["layers"],
    )
    model.visual = adaptclip_mod.VisionTransformer(
        VISION["image"], VISION["patch"], VISION["width"], VISION["layers"], VISION["heads"], EMBED_DIM
    )
    assert model.visual.num_heads == VISION["heads"]
    return model


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--adaptclip", required=True, type=Path, help="extracted official gaobb/AdaptCLIP repository")
    args = ap.parse_args()
    repo = args.adaptclip.resolve()
    if not (repo / "adaptcliplib" / "adaptclip.py").is_file():
        sys.exit(f"{repo}: not an AdaptCLIP checkout (adaptcliplib/adaptclip.py missing)")
    sys.path.insert(0, str(repo))
    import adaptcliplib  # noqa: F401  (the official package)
    from adaptcliplib import adaptclip as A
    from adaptcliplib import PQAdapter, TextualAdapter, VisualAdapter, fusion_fun
    from scipy.ndimage import gaussian_filter
    import scipy

    # test.py's own helper for few-shot memories (its import pulls in the
    # dataset/metric modules: tabulate, tifffile, torchmetrics, ... see README).
    import test as official_test

    # prepare_static_text_feature() calls .cuda() on the token ids; on this
    # CPU-only reference run .cuda() is the identity.
    torch.Tensor.cuda = lambda self, *a, **k: self

    g = torch.Generator().manual_seed(SEED)

    # ---- 1. the tiny CLIP checkpoint (f16 on disk, f32 in the model) ---------
    # make_learned_fixtures.py wrote it; its config must be this script's.
    if not (CKPT_DIR / "open_clip_model.safetensors").is_file():
        sys.exit(f"{CKPT_DIR}: run make_learned_fixtures.py first (it writes the shared tiny CLIP)")
    cfg = json.loads((CKPT_DIR / "open_clip_config.json").read_text())["model_cfg"]
    want = OPENCLIP_CONFIG["model_cfg"]
    assert cfg["embed_dim"] == want["embed_dim"] and cfg["quick_gelu"], cfg
    assert all(cfg["vision_cfg"][k] == v for k, v in want["vision_cfg"].items() if k != "mlp_ratio"), cfg
    assert cfg["text_cfg"] == want["text_cfg"], cfg
    model = build_tiny_clip(A)
    loaded = {k: v.float() for k, v in load_file(str(CKPT_DIR / "open_clip_model.safetensors")).items()}
    model.load_state_dict(loaded, strict=True)
    model.eval()
    model.visual.DAPM_replace(DPAM_layer=DPAM_LAYER)

    # ---- 2. learned parameters, saved as the official train.py saves them ----
    patch = VISION["patch"]
    textual = TextualAdapter(model, RUN_SIZE, N_CTX)
    visual = VisualAdapter(RUN_SIZE, patch, input_dim=EMBED_DIM, reduction=VL_REDUCTION)
    pq = PQAdapter(RUN_SIZE, patch, context=PQ_CONTEXT, input_dim=EMBED_DIM, mid_dim=PQ_MID_DIM,
                   layers_num=len(FEATURES_LIST))
    for m in (textual, visual, pq):
        randomize_(m, g)
    LEARNED_DIR.mkdir(parents=True, exist_ok=True)
    learned_path = LEARNED_DIR / "learned.pth"
    torch.save(
        {
            "textual_learner": textual.state_dict(),
            "visual_learner": visual.state_dict(),
            "pq_learner": pq.state_dict(),
        },
        str(learned_path),
    )

    # ---- 3. re-load as test.py does --------------------------------------------
    textual = TextualAdapter(model, RUN_SIZE, N_CTX)
    visual = VisualAdapter(RUN_SIZE, patch, input_dim=EMBED_DIM, reduction=VL_REDUCTION)
    pq = PQAdapter(RUN_SIZE, patch, context=PQ_CONTEXT, input_dim=EMBED_DIM, mid_dim=PQ_MID_DIM,
                   layers_num=len(FEATURES_LIST))
    ck = torch.load(str(learned_path))
    textual.load_state_dict(ck["textual_learner"])
    visual.load_state_dict(ck["visual_learner"])
    pq.load_state_dict(ck["pq_learner"])
    for m in (model, textual, visual, pq):
        m.eval()

    # ---- 4. inputs ----------------------------------------------------------------
    pixels = torch.randn(BATCH, 3, RUN_SIZE, RUN_SIZE, generator=g)
    prompt_pixels = torch.randn(SHOTS, 3, RUN_SIZE, RUN_SIZE, generator=g)

    with torch.no_grad():
        # ---- 5. text side (test.py: "Text Encoder forward") ---------------------
        textual.prepare_static_text_feature(model)
        static_text = textual.static_text_features  # [2, P], raw means (normal, anomalous)
        learned_prompts, tokenized_prompts = textual()
        learned_text = model.encode_text_learn(learned_prompts, tokenized_prompts).float()  # [2, P]

        # ---- 6. image side ---------------------------------------------------------
        query_feats, query_patch_feats = model.encode_image(pixels, FEATURES_LIST, DPAM_layer=DPAM_LAYER)
        prompt_feats_all, prompt_patch_all = model.encode_image(prompt_pixels, FEATURES_LIST, DPAM_layer=DPAM_LAYER)

        # zero-shot branch of test.py
        g_vl, m_vl = visual(query_feats, query_patch_feats, static_text)
        m_vl = m_vl[:, 1]
        s_vl = g_vl.softmax(-1)[:, 1]
        g_tl, m_tl = textual.compute_global_local_score(query_feats, query_patch_feats, learned_text)
        m_tl = m_tl[:, 1]
        s_tl = g_tl.softmax(-1)[:, 1]

        raw0 = fusion_fun([m_vl, m_tl], fusion_type=FUSION)
        map0 = torch.stack([torch.from_numpy(gaussian_filter(i, sigma=SIGMA)) for i in raw0.cpu()], dim=0)
        max0 = map0.view(BATCH, -1).max(dim=1)[0]
        score0 = fusion_fun([s_vl, s_tl, max0], fusion_type=FUSION)

        # few-shot branch: one class, SHOTS references (test.py's memory layout)
        image_memory = {"obj": prompt_feats_all}
        patch_memory = {"obj": list(prompt_patch_all)}
        prompt_feats, prompt_patch_feats = official_test.prompt_association(image_memory, patch_memory, ["obj"] * BATCH)
        g_pq, local_pq_list, align_list = pq(query_feats, query_patch_feats, prompt_feats, prompt_patch_feats)
        m_pq = torch.concat([x[:, 1].unsqueeze(1) for x in local_pq_list], dim=1).mean(dim=1)
        align = fusion_fun(align_list, fusion_type="harmonic_mean")[:, 0]
        s_pq = torch.concat([x.softmax(-1).unsqueeze(-1) for x in g_pq], dim=-1).mean(dim=-1)[:, 1]
        rawk = fusion_fun([m_vl, m_tl, m_pq], fusion_type=FUSION)
        rawk = fusion_fun([rawk, align], fusion_type="harmonic_mean")
        mapk = torch.stack([torch.from_numpy(gaussian_filter(i, sigma=SIGMA)) for i in rawk.cpu()], dim=0)
        maxk = mapk.view(BATCH, -1).max(dim=1)[0]
        scorek = fusion_fun([s_vl, s_tl, s_pq], fusion_type=FUSION)
        scorek = fusion_fun([scorek, maxk], fusion_type="harmonic_mean")

    out = {
        "pixel_values": pixels,
        "prompt_pixel_values": prompt_pixels,
        "static_text": static_text,
        "learned_text": learned_text,
        "tokenized_prompts": tokenized_prompts.to(torch.int64),
        "global": query_feats,
        "prompt_global": prompt_feats_all,
        "visual_score": s_vl,
        "textual_score": s_tl,
        "visual_map": m_vl,
        "textual_map": m_tl,
        "map_zero": map0,
        "score_zero": score0,
        "pq_score": s_pq,
        "pq_map": m_pq,
        "align_map": align,
        "map_few": mapk,
        "score_few": scorek,
    }
    for layer, t, pt in zip(FEATURES_LIST, query_patch_feats, prompt_patch_all):
        out[f"tokens_{layer}"] = t
        out[f"prompt_tokens_{layer}"] = pt
    out = {k: v.detach().contiguous() for k, v in out.items()}
    for k, v in out.items():
        if v.is_floating_point():
            assert torch.isfinite(v).all(), k
            out[k] = v.float()
    info = {
        "generator": "tests/reference/make_adaptclip_fixtures.py",
        "official": "github.com/gaobb/AdaptCLIP (imported from --adaptclip, not vendored)",
        "torch": torch.__version__,
        "scipy": scipy.__version__,
        "numpy": np.__version__,
        "run_size": RUN_SIZE,
        "features_list": FEATURES_LIST,
        "dpam_layer": DPAM_LAYER,
        "n_ctx": N_CTX,
        "vl_reduction": VL_REDUCTION,
        "pq_mid_dim": PQ_MID_DIM,
        "shots": SHOTS,
        "sigma": SIGMA,
    }
    save_file(out, str(OUT), metadata={"info": json.dumps(info, sort_keys=True)})
    print(f"wrote {OUT.relative_to(ROOT)}")
    for k, v in out.items():
        print(f"  {k:<22s} {str(v.dtype):<14s} {list(v.shape)}")
    print("scores zero-shot", score0.tolist(), "few-shot", scorek.tolist())
    print("visual", s_vl.tolist(), "textual", s_tl.tolist(), "pq", s_pq.tolist())
    print(LEARNED_DIR.relative_to(ROOT), sum(f.stat().st_size for f in LEARNED_DIR.iterdir()), "bytes")
    print(OUT.relative_to(ROOT), OUT.stat().st_size, "bytes")


if __name__ == "__main__":
    main()
