#!/usr/bin/env python3
"""Full-size AnomalyCLIP parity: `anoscope detect --mode anomalyclip --pixels` on a full-size
checkpoint (e.g. `anoscope random-weights --arch vit-l-14-336`) against the official code's
`test.py` inference on the same weights, pixels and text features.

    /work/venv-ref/bin/python tests/reference/check_full_learned.py --anomalyclip /work/ext/AnomalyCLIP \
        --model DIR --learned LEARNED.safetensors --pixels PIX.safetensors --ours OUT

DIR      the checkpoint (transformers layout, f32 or f16: cast to f32), the image tower of which is
         mapped onto the official model's OpenAI key names and loaded with strict=True
LEARNED  `anoscope convert --learned FILE.pth --model DIR --out LEARNED.safetensors` (its
         `text_features` [2,P] are the class pair both sides use: the text side is covered by the
         tiny fixtures, this script checks the image side at full size)
PIX      `pixel_values` [B,3,H,W] (normalised), H = W (518 in the official scripts)
OUT      what `anoscope detect --mode anomalyclip --model DIR --learned LEARNED --pixels PIX
         --out OUT` wrote (`<i>.json` score, `<i>.map.safetensors` anomaly_map [H,W])

The official side: `AnomalyCLIP(768, 336, 24, 1024, 14, …)` (float32), `DAPM_replace(20)`,
`encode_image(x, [24], DPAM_layer=20)` (which resizes the 24×24 position grid bilinearly to the
input's grid), the global score softmax(cos/0.07)[anomalous], the per-patch maps
(`compute_similarity`, `get_similarity_map`) and `scipy.ndimage.gaussian_filter(sigma=4)`, one
image at a time as test.py runs. Prints max |Δ| of scores and maps; exits 1 above --tol (1e-4).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file


def openai_visual(hf: dict[str, torch.Tensor], layers: int) -> dict[str, torch.Tensor]:
    """The image tower of a transformers CLIP state dict under OpenAI CLIP's key names."""
    v = "vision_model."
    out = {
        "conv1.weight": hf[v + "embeddings.patch_embedding.weight"],
        "class_embedding": hf[v + "embeddings.class_embedding"],
        "positional_embedding": hf[v + "embeddings.position_embedding.weight"],
        "ln_pre.weight": hf[v + "pre_layrnorm.weight"],
        "ln_pre.bias": hf[v + "pre_layrnorm.bias"],
        "ln_post.weight": hf[v + "post_layernorm.weight"],
        "ln_post.bias": hf[v + "post_layernorm.bias"],
        "proj": hf["visual_projection.weight"].t().contiguous(),
    }
    for i in range(layers):
        src, dst = f"{v}encoder.layers.{i}.", f"transformer.resblocks.{i}."
        out[dst + "attn.in_proj_weight"] = torch.cat([hf[src + f"self_attn.{p}_proj.weight"] for p in "qkv"])
        out[dst + "attn.in_proj_bias"] = torch.cat([hf[src + f"self_attn.{p}_proj.bias"] for p in "qkv"])
        out[dst + "attn.out_proj.weight"] = hf[src + "self_attn.out_proj.weight"]
        out[dst + "attn.out_proj.bias"] = hf[src + "self_attn.out_proj.bias"]
        for a, b in (("layer_norm1", "ln_1"), ("layer_norm2", "ln_2"), ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")):
            out[dst + b + ".weight"] = hf[src + a + ".weight"]
            out[dst + b + ".bias"] = hf[src + a + ".bias"]
    return {k: t.float() for k, t in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--anomalyclip", required=True, type=Path)
    ap.add_argument("--model", required=True, type=Path)
    ap.add_argument("--learned", required=True, type=Path)
    ap.add_argument("--pixels", required=True, type=Path)
    ap.add_argument("--ours", required=True, type=Path)
    ap.add_argument("--tol", type=float, default=1e-4)
    args = ap.parse_args()
    model_dir, ours = args.model.resolve(), args.ours.resolve()
    learned, pixels_path = args.learned.resolve(), args.pixels.resolve()
    sys.path.insert(0, str(args.anomalyclip.resolve()))
    os.chdir(args.anomalyclip)
    import AnomalyCLIP_lib
    from AnomalyCLIP_lib.AnomalyCLIP import AnomalyCLIP
    from scipy.ndimage import gaussian_filter

    cfg = json.loads((model_dir / "config.json").read_text())["vision_config"]
    assert (cfg["hidden_size"], cfg["num_hidden_layers"], cfg["patch_size"], cfg["image_size"]) == (1024, 24, 14, 336), cfg
    design = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}
    model = AnomalyCLIP(768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12, design_details=design).float().eval()
    model.visual.load_state_dict(openai_visual(load_file(str(model_dir / "model.safetensors")), 24), strict=True)
    model.visual.DAPM_replace(DPAM_layer=20)

    text = load_file(str(learned))["text_features"].float()  # [2, P]: normal, anomalous
    text_features = (text / text.norm(dim=-1, keepdim=True)).unsqueeze(0)  # [1, 2, P] as test.py
    pixels = load_file(str(pixels_path))["pixel_values"].float()
    size = pixels.shape[-1]
    worst_score = worst_map = 0.0
    with torch.no_grad():
        for i, one in enumerate(pixels.split(1)):
            image_features, patch_features = model.encode_image(one, [24], DPAM_layer=20)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            score = float(((image_features @ text_features.permute(0, 2, 1)) / 0.07).softmax(-1)[0, 0, 1])
            maps = []
            for patch_feature in patch_features:
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                sm = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], size)
                maps.append((sm[..., 1] + 1 - sm[..., 0]) / 2.0)
            raw = torch.stack(maps).sum(dim=0)[0]
            want = torch.from_numpy(gaussian_filter(raw.numpy(), sigma=4)).float()
            j = json.loads((ours / f"{i}.json").read_text())
            got = load_file(str(ours / f"{i}.map.safetensors"))["anomaly_map"].float()
            assert got.shape == want.shape, (got.shape, want.shape)
            ds, dm = abs(j["score"] - score), float((got - want).abs().max())
            print(f"image {i} ({size} px): score ours {j['score']:.6f} official {score:.6f} |Δ| {ds:.2e}; "
                  f"map range {float(want.min()):.4f}..{float(want.max()):.4f}, max |Δ| {dm:.2e}")
            worst_score, worst_map = max(worst_score, ds), max(worst_map, dm)
    print(f"max |Δ| score {worst_score:.2e}, map {worst_map:.2e} (tolerance {args.tol:g})")
    sys.exit(0 if max(worst_score, worst_map) <= args.tol else 1)


if __name__ == "__main__":
    main()
