#!/usr/bin/env python3
"""Build tiny random CLIP checkpoints + reference outputs for anoscope's tests.

Run from the repository root:

    /work/venv-ref/bin/python tests/reference/make_fixtures.py

Writes (see tests/reference/README.md for the exact definitions):

    tests/fixtures/hf_tiny/{config.json, model.safetensors}          (float16)
    tests/fixtures/hf_tiny_expected.safetensors
    tests/fixtures/openclip_tiny/{open_clip_config.json, open_clip_model.safetensors}  (float32)
    tests/fixtures/openclip_tiny_expected.safetensors

Everything is deterministic (fixed seeds, CPU, float32, 2 threads).  Expected
outputs are computed from the checkpoints *as re-loaded from disk* by the
reference libraries, and every manual (plain PyTorch) transcription used for
paths the libraries do not provide is first checked against the library
forward to 1e-5.
"""

from __future__ import annotations

import copy
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from torch import nn
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common as C  # noqa: E402

import open_clip  # noqa: E402
import transformers  # noqa: E402
from transformers import CLIPConfig, CLIPModel, CLIPTokenizer  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
FIX = ROOT / "tests" / "fixtures"

SEED = 20240611
torch.set_num_threads(2)
torch.manual_seed(SEED)
np.random.seed(SEED)
torch.set_default_dtype(torch.float32)

# --------------------------------------------------------------------------
# Configurations
# --------------------------------------------------------------------------

HF_VISION = dict(
    hidden_size=64, intermediate_size=256, num_hidden_layers=3, num_attention_heads=4,
    patch_size=8, image_size=32, num_channels=3, hidden_act="quick_gelu", projection_dim=48,
)
HF_TEXT = dict(
    vocab_size=49408, hidden_size=8, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
    max_position_embeddings=77, hidden_act="quick_gelu", projection_dim=48,
    # Old-style ids as in openai/clip-vit-base-patch16: eos_token_id == 2 makes
    # transformers pool the text at argmax(input_ids) (= first <|endoftext|>).
    bos_token_id=0, eos_token_id=2, pad_token_id=1,
)
HF_PROJ = 48

OPENCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 48,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 32, "layers": 3, "width": 64, "head_width": 16, "mlp_ratio": 4.0, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 8, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}

PROMPTS = [
    "a photo of a flawless bottle.",
    "a photo of a damaged bottle.",
    "",
    "a cropped photo of the metal_nut with a scratch!",
    "a photo of a " + " ".join(f"very{i % 7} long" for i in range(40)) + " prompt that is truncated.",
    "Ünïcödé 123 test",
]
CONTEXT = 77
SURGERY_KS = (1, 2)

# --------------------------------------------------------------------------
# Random re-initialisation (every parameter must matter)
# --------------------------------------------------------------------------


def reinit_(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter with non-trivial random values.

    * LayerNorm weight 1 + 0.1 N(0,1), LayerNorm bias 0.1 N(0,1)
    * all other biases 0.1 N(0,1)
    * class / positional / token embeddings 0.5 N(0,1)
    * matrices N(0, 1/fan_in) so every layer changes the residual stream by
      O(1) and attention softmaxes are far from uniform
    * logit_scale log(1/0.07) + 0.1 N(0,1)
    """
    g = torch.Generator().manual_seed(seed)

    def randn(shape):
        return torch.randn(shape, generator=g, dtype=torch.float32)

    seen = set()
    with torch.no_grad():
        for mname, mod in model.named_modules():
            for pname, p in mod.named_parameters(recurse=False):
                full = f"{mname}.{pname}" if mname else pname
                assert id(p) not in seen, f"shared parameter {full}"
                seen.add(id(p))
                shape = p.shape
                if isinstance(mod, nn.LayerNorm):
                    v = 1.0 + 0.1 * randn(shape) if pname == "weight" else 0.1 * randn(shape)
                elif pname == "logit_scale":
                    v = math.log(1 / 0.07) + 0.1 * randn(shape)
                elif pname in ("class_embedding", "positional_embedding") or isinstance(mod, nn.Embedding):
                    v = 0.5 * randn(shape)
                elif pname.endswith("bias"):  # Linear biases, MultiheadAttention.in_proj_bias
                    v = 0.1 * randn(shape)
                elif isinstance(mod, (nn.Linear, nn.Conv2d)) and pname == "weight":
                    v = randn(shape) / math.sqrt(math.prod(shape[1:]))  # [out, in, ...]
                elif pname == "in_proj_weight":  # [3D, D]
                    v = randn(shape) / math.sqrt(shape[1])
                elif pname in ("proj", "text_projection"):  # open_clip [in, out], applied as x @ W
                    v = randn(shape) / math.sqrt(shape[0])
                else:
                    raise ValueError(f"no init rule for {full} {tuple(shape)} in {type(mod).__name__}")
                p.copy_(v)
    n_params = len(list(model.parameters()))
    assert len(seen) == n_params, (len(seen), n_params)


# --------------------------------------------------------------------------
# Tokenizers
# --------------------------------------------------------------------------


def hf_tokenizer_offline() -> CLIPTokenizer:
    """transformers' CLIPTokenizer built offline from open_clip's bundled BPE
    (bpe_simple_vocab_16e6.txt.gz): this is the same vocab/merges as the
    openai/clip-* tokenizer.json on the hub; only the special-token spelling
    differs (open_clip '<start_of_text>' vs HF '<|startoftext|>')."""
    st = open_clip.tokenizer.SimpleTokenizer()
    rename = {"<start_of_text>": "<|startoftext|>", "<end_of_text>": "<|endoftext|>"}
    vocab = {rename.get(k, k): v for k, v in st.encoder.items()}
    merges = [m for m, _ in sorted(st.bpe_ranks.items(), key=lambda kv: kv[1])]
    assert vocab["<|startoftext|>"] == 49406 and vocab["<|endoftext|>"] == 49407 and len(vocab) == 49408
    return CLIPTokenizer(vocab=vocab, merges=merges)


def hf_input_ids(tok):
    enc = tok(PROMPTS, padding="max_length", max_length=CONTEXT, truncation=True, return_tensors="pt")
    return enc["input_ids"].to(torch.int64), enc["attention_mask"]


def open_clip_input_ids():
    return open_clip.tokenize(PROMPTS, context_length=CONTEXT).to(torch.int64)


# --------------------------------------------------------------------------
# Shared inputs
# --------------------------------------------------------------------------


def make_inputs():
    g = torch.Generator().manual_seed(SEED + 1)
    return {
        "pixel_values": torch.randn(2, 3, 32, 32, generator=g),
        "pixel_values_48": torch.randn(1, 3, 48, 48, generator=g),
    }


WINDOWS = C.sliding_windows(grid=4, size=2, stride=1)  # 9 windows x 4 patches


def clean_dir(d: Path, keep):
    """Leave only `keep` in d."""
    for p in d.iterdir():
        if p.name not in keep:
            shutil.rmtree(p) if p.is_dir() else p.unlink()
    assert sorted(p.name for p in d.iterdir()) == sorted(keep), list(d.iterdir())


def common_vision_expected(vw, lib, pixels, lib_windows):
    """Check the manual transcription against the library outputs `lib`, and
    return the vision part of the expected tensors."""
    man = C.vision_forward(vw, pixels)
    for name in ("last_hidden_state", "image_embeds", "patch_tokens"):
        C.assert_close(f"manual vs lib {name}", man[name], lib[name])
    assert len(man["hidden_states"]) == len(lib["hidden_states"]) == len(vw.blocks) + 1
    for i, (a, b) in enumerate(zip(man["hidden_states"], lib["hidden_states"])):
        C.assert_close(f"manual vs lib hidden_state_{i}", a, b)

    out = {
        "image_embeds": lib["image_embeds"],
        "last_hidden_state": lib["last_hidden_state"],
        "hidden_state_0": lib["hidden_states"][0],
        "hidden_state_1": lib["hidden_states"][1],
        "patch_tokens": lib["patch_tokens"],
    }
    for k in SURGERY_KS:
        tokens, x_ori = C.surgery_forward(vw, pixels, k)
        C.assert_close(f"surgery k={k} x_ori vs lhs", x_ori, lib["last_hidden_state"])
        out[f"surgery_tokens_k{k}"] = tokens
    win = C.window_forward(vw, pixels, WINDOWS)
    C.assert_close("manual vs lib windows", win, lib_windows)
    out["window_indices"] = torch.tensor(WINDOWS, dtype=torch.int64)
    out["window_embeds"] = win
    return out


def save_expected(path: Path, tensors: dict, layout: str):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    info = {
        "generator": "tests/reference/make_fixtures.py",
        "layout": layout,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "open_clip": open_clip.__version__,
        "prompts": PROMPTS,
    }
    # A single metadata key: safetensors' header map order is not stable
    # across runs with several keys, and we want byte-identical re-runs.
    save_file(tensors, str(path), metadata={"info": json.dumps(info, ensure_ascii=False, sort_keys=True)})
    print(f"wrote {path.relative_to(ROOT)}")
    for k, v in tensors.items():
        print(f"  {k:<20s} {str(v.dtype):<14s} {list(v.shape)}")


# --------------------------------------------------------------------------
# 1. transformers layout (float16 checkpoint)
# --------------------------------------------------------------------------


def build_hf(inputs):
    print("== transformers layout (hf_tiny, float16) ==")
    out_dir = FIX / "hf_tiny"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    config = CLIPConfig(text_config=HF_TEXT, vision_config=HF_VISION, projection_dim=HF_PROJ)
    model = CLIPModel(config).eval()
    reinit_(model, SEED + 10)
    ref_f16 = {k: v.detach().half() for k, v in model.state_dict().items()}

    model.half().save_pretrained(str(out_dir))
    clean_dir(out_dir, ["config.json", "model.safetensors"])

    # Reload from disk, compute in float32 with the f16-rounded weights.
    model = CLIPModel.from_pretrained(str(out_dir), attn_implementation="eager").float().eval()
    sd = model.state_dict()
    assert set(sd) == set(ref_f16), set(sd) ^ set(ref_f16)
    for k, v in ref_f16.items():
        assert torch.equal(sd[k], v.float()), k
    assert model.config.text_config.eos_token_id == 2
    on_disk = load_file(str(out_dir / "model.safetensors"))
    assert all(v.dtype == torch.float16 for v in on_disk.values())
    assert set(on_disk) == set(sd), set(on_disk) ^ set(sd)

    vw = C.vision_weights_from_hf(model)
    with torch.no_grad():
        px = inputs["pixel_values"]
        lib = C.hf_vision_outputs(model, px)
        exp = {"pixel_values": px}
        exp.update(common_vision_expected(vw, lib, px, C.hf_window_outputs(model, px, WINDOWS)))

        # interpolated position embeddings (48x48 input, grid 6x6)
        px48 = inputs["pixel_values_48"]
        lib48 = C.hf_vision_outputs(model, px48, interpolate=True)
        man48 = C.vision_forward(vw, px48)
        C.assert_close("manual vs lib image_embeds_48", man48["image_embeds"], lib48["image_embeds"])
        C.assert_close("manual vs lib patch_tokens_48", man48["patch_tokens"], lib48["patch_tokens"])
        exp.update(pixel_values_48=px48, image_embeds_48=lib48["image_embeds"], patch_tokens_48=lib48["patch_tokens"])

        # text
        tok = hf_tokenizer_offline()
        ids, mask = hf_input_ids(tok)
        oc_ids = open_clip_input_ids()
        for i in range(len(PROMPTS)):  # same ids as open_clip up to (and incl.) the first eot
            n = int(oc_ids[i].argmax()) + 1
            assert torch.equal(ids[i, :n], oc_ids[i, :n]), (PROMPTS[i], ids[i], oc_ids[i])
            assert (ids[i, n:] == 49407).all()
        text = C.hf_text_embeds(model, ids, mask)
        # pooling is position-wise causal => padding mask must not matter
        C.assert_close("text embeds w/o attention_mask", C.hf_text_embeds(model, ids), text)
        exp.update(input_ids=ids, text_embeds=text, logit_scale=model.logit_scale.reshape(1))

    save_expected(FIX / "hf_tiny_expected.safetensors", exp, "transformers")


# --------------------------------------------------------------------------
# 2. open_clip layout (float32 checkpoint)
# --------------------------------------------------------------------------


def open_clip_model(model_cfg) -> "open_clip.CLIP":
    return open_clip.CLIP(**copy.deepcopy(model_cfg)).eval()


def build_open_clip(inputs):
    print("== open_clip layout (openclip_tiny, float32) ==")
    out_dir = FIX / "openclip_tiny"
    if out_dir.exists():
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True)
    model_cfg = OPENCLIP_CONFIG["model_cfg"]
    model = open_clip_model(model_cfg)
    # In open_clip 3.x the text projection is a plain Parameter [width, embed_dim]
    # (nn.Linear only when text_cfg.proj_bias=True).
    assert isinstance(model.text_projection, nn.Parameter), type(model.text_projection)
    reinit_(model, SEED + 20)

    sd = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    assert "attn_mask" not in sd  # non-persistent buffer
    save_file(sd, str(out_dir / "open_clip_model.safetensors"))
    with open(out_dir / "open_clip_config.json", "w") as f:
        json.dump(OPENCLIP_CONFIG, f, indent=2)
        f.write("\n")
    clean_dir(out_dir, ["open_clip_config.json", "open_clip_model.safetensors"])

    # Reload from disk into a fresh model (strict).
    with open(out_dir / "open_clip_config.json") as f:
        model_cfg = json.load(f)["model_cfg"]
    model = open_clip_model(model_cfg)
    model.load_state_dict(load_file(str(out_dir / "open_clip_model.safetensors")), strict=True)

    vw = C.vision_weights_from_open_clip(model)
    assert vw.act == "gelu" and vw.heads == 4
    with torch.no_grad():
        px = inputs["pixel_values"]
        lib = C.open_clip_vision_outputs(model, px)
        exp = {"pixel_values": px}
        exp.update(common_vision_expected(vw, lib, px, C.open_clip_window_outputs(model, px, WINDOWS)))

        # 48x48 input: open_clip's own resize_pos_embed on the state dict of a
        # model built for image_size 48 (bicubic, antialias=True in 3.x).
        px48 = inputs["pixel_values_48"]
        cfg48 = copy.deepcopy(model_cfg)
        cfg48["vision_cfg"]["image_size"] = 48
        m48 = open_clip_model(cfg48)
        sd48 = load_file(str(out_dir / "open_clip_model.safetensors"))
        open_clip.model.resize_pos_embed(sd48, m48)
        m48.load_state_dict(sd48, strict=True)
        lib48 = C.open_clip_vision_outputs(m48, px48)
        man48 = C.vision_forward(vw, px48)  # resizes the 4x4 grid itself (vw.interp)
        C.assert_close("manual vs lib image_embeds_48", man48["image_embeds"], lib48["image_embeds"])
        C.assert_close("manual vs lib patch_tokens_48", man48["patch_tokens"], lib48["patch_tokens"])
        exp.update(pixel_values_48=px48, image_embeds_48=lib48["image_embeds"], patch_tokens_48=lib48["patch_tokens"])

        ids = open_clip_input_ids()
        exp.update(
            input_ids=ids,
            text_embeds=model.encode_text(ids, normalize=False),
            logit_scale=model.logit_scale.detach().reshape(1),
        )

    save_expected(FIX / "openclip_tiny_expected.safetensors", exp, "open_clip")


def main():
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, open_clip {open_clip.__version__}")
    FIX.mkdir(parents=True, exist_ok=True)
    inputs = make_inputs()
    build_hf(inputs)
    build_open_clip(inputs)

    total = 0
    for p in sorted(FIX.rglob("*")):
        if p.is_file():
            total += p.stat().st_size
    print(f"tests/fixtures total: {total / 1e6:.2f} MB")
    assert total <= 10_000_000, "fixtures exceed 10 MB"


if __name__ == "__main__":
    main()
