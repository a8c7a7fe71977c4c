#!/usr/bin/env python3
"""Compare anoscope's outputs on a FULL-SIZE checkpoint with the reference libraries.

    python tests/reference/check_full.py --model DIR --ours OURS.safetensors \
        [--pixels PIX.safetensors] [--surgery-layers K]

DIR   a checkpoint directory in either layout (typically written by
      `anoscope random-weights`):
        transformers: config.json + model.safetensors
        open_clip:    open_clip_config.json + open_clip_model.safetensors
OURS  what `anoscope embed --pixels PIX --model DIR --out OURS` wrote:
        image_embeds [1,P], patch_tokens [1,N,P], last_hidden_state [1,1+N,D],
        optionally surgery_tokens [1,N,P] (needs --surgery-layers K),
        optionally text_embeds [T,P] together with input_ids [T,77].
PIX   safetensors with `pixel_values` [B,3,H,W] (already normalised); if not
      given, `pixel_values` is read from OURS.

The checkpoint is loaded with transformers (CLIPModel.from_pretrained) or
open_clip (open_clip.CLIP(**model_cfg) + load_state_dict(strict=True)), run on
the same pixels, and for every output present in OURS the script prints
max|d| and the minimum cosine similarity over rows (feature vectors).  Exit
status is 1 if any cosine < 0.9999 (or an output cannot be compared).

If H differs from the checkpoint's image size the position embeddings are
interpolated the layout's own way (transformers: interpolate_pos_encoding,
bicubic without antialias; open_clip: resize_pos_embed, bicubic WITH antialias).
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

COS_MIN = 0.9999


def load_hf(model_dir: Path, image_size: int):
    from transformers import CLIPModel

    model = CLIPModel.from_pretrained(str(model_dir), attn_implementation="eager").float().eval()
    interpolate = image_size != model.config.vision_config.image_size
    return model, interpolate


def reference_hf(model, interpolate, pixels, input_ids, surgery_k):
    ref = {}
    lib = C.hf_vision_outputs(model, pixels, interpolate=interpolate)
    ref.update(image_embeds=lib["image_embeds"], patch_tokens=lib["patch_tokens"],
               last_hidden_state=lib["last_hidden_state"])
    for i, h in enumerate(lib["hidden_states"]):
        ref[f"hidden_state_{i}"] = h
    vw = C.vision_weights_from_hf(model)
    if surgery_k:
        tokens, x_ori = C.surgery_forward(vw, pixels, surgery_k)
        # sanity: the manual normal path must reproduce the library
        assert C.min_row_cos(x_ori, lib["last_hidden_state"]) > 0.99999
        ref["surgery_tokens"] = tokens
    if input_ids is not None:
        ref["text_embeds"] = C.hf_text_embeds(model, input_ids)
    return ref


def load_open_clip(model_dir: Path, image_size: int):
    import open_clip

    with open(model_dir / "open_clip_config.json") as f:
        model_cfg = copy.deepcopy(json.load(f)["model_cfg"])
    if model_cfg.pop("custom_text", False):
        raise SystemExit("custom_text open_clip models are not supported")
    sd = load_file(str(model_dir / "open_clip_model.safetensors"))
    if image_size != model_cfg["vision_cfg"].get("image_size"):
        model_cfg["vision_cfg"]["image_size"] = image_size
        model = open_clip.CLIP(**model_cfg).eval()
        open_clip.model.resize_pos_embed(sd, model)
    else:
        model = open_clip.CLIP(**model_cfg).eval()
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.float(), False


def reference_open_clip(model, _interpolate, pixels, input_ids, surgery_k):
    ref = {}
    lib = C.open_clip_vision_outputs(model, pixels)
    ref.update(image_embeds=lib["image_embeds"], patch_tokens=lib["patch_tokens"],
               last_hidden_state=lib["last_hidden_state"])
    for i, h in enumerate(lib["hidden_states"]):
        ref[f"hidden_state_{i}"] = h
    vw = C.vision_weights_from_open_clip(model)
    if surgery_k:
        tokens, x_ori = C.surgery_forward(vw, pixels, surgery_k)
        assert C.min_row_cos(x_ori, lib["last_hidden_state"]) > 0.99999
        ref["surgery_tokens"] = tokens
    if input_ids is not None:
        ref["text_embeds"] = model.encode_text(input_ids, normalize=False)
    return ref


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, type=Path, help="checkpoint directory (either layout)")
    ap.add_argument("--ours", required=True, type=Path, help="anoscope embed output (.safetensors)")
    ap.add_argument("--pixels", type=Path, help="safetensors with pixel_values (default: from --ours)")
    ap.add_argument("--surgery-layers", type=int, default=0, help="K used for surgery_tokens in --ours")
    ap.add_argument("--threads", type=int, default=4)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ours = load_file(str(args.ours))
    src = load_file(str(args.pixels)) if args.pixels else ours
    if "pixel_values" in src:
        pixels = src["pixel_values"]
    elif len(src) == 1:
        pixels = next(iter(src.values()))
    else:
        raise SystemExit("no pixel_values found (pass --pixels)")
    pixels = pixels.float()
    if pixels.ndim == 3:
        pixels = pixels.unsqueeze(0)
    input_ids = ours.get("input_ids")
    input_ids = input_ids.long() if input_ids is not None and "text_embeds" in ours else None

    if (args.model / "config.json").exists():
        layout, load, reference = "transformers", load_hf, reference_hf
    elif (args.model / "open_clip_config.json").exists():
        layout, load, reference = "open_clip", load_open_clip, reference_open_clip
    else:
        raise SystemExit(f"{args.model}: neither config.json nor open_clip_config.json")

    if "surgery_tokens" in ours and not args.surgery_layers:
        raise SystemExit("--ours has surgery_tokens: pass --surgery-layers K")

    print(f"layout {layout}, pixels {list(pixels.shape)}")
    with torch.no_grad():
        model, interpolate = load(args.model, pixels.shape[-1])
        ref = reference(model, interpolate, pixels, input_ids,
                        args.surgery_layers if "surgery_tokens" in ours else 0)

    ok = True
    compared = 0
    for name, mine in ours.items():
        if name in ("pixel_values", "input_ids"):
            continue
        if name not in ref:
            print(f"  {name:<20s} (no reference, skipped)")
            continue
        want = ref[name]
        if tuple(mine.shape) != tuple(want.shape):
            print(f"  {name:<20s} SHAPE MISMATCH ours {list(mine.shape)} vs ref {list(want.shape)}")
            ok = False
            continue
        mine = mine.float()
        cos = C.min_row_cos(mine, want)
        d = C.max_abs(mine, want)
        flag = "ok" if cos >= COS_MIN else "FAIL"
        ok &= cos >= COS_MIN
        compared += 1
        print(f"  {name:<20s} {str(list(want.shape)):<16s} max|d| {d:.3e}  min cos {cos:.7f}  {flag}")
    if compared == 0:
        print("nothing compared")
        ok = False
    print("PASS" if ok else "FAIL")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
