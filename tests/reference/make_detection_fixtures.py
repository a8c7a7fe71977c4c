#!/usr/bin/env python3
"""Reference fixtures for anoscope's detection modes (WinCLIP, fast dense, MuSc).

Run from the repository root (needs open_clip_torch < 2.26, see DETECTION.md):

    /work/venv-anomalib/bin/python tests/reference/make_detection_fixtures.py

Writes (definitions in tests/reference/DETECTION.md):

    tests/fixtures/winclip_tiny/{open_clip_config.json, open_clip_model.safetensors}  (float16)
    tests/fixtures/winclip_tiny_expected.safetensors   WinCLIP (anomalib) + fast dense mode
    tests/fixtures/musc_tiny_expected.safetensors      MuSc (official algorithm)

Deterministic: fixed seeds, CPU, float32, 2 threads.  Expected values are
computed from the checkpoint as re-loaded from disk (f16 weights cast to f32).
WinCLIP values come from anomalib's own WinClipModel; independent plain-PyTorch
transcriptions (detection_common.py) are asserted to reproduce them.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import common as C  # noqa: E402
import detection_common as D  # noqa: E402

import open_clip  # noqa: E402
from open_clip.version import __version__ as OPEN_CLIP_VERSION  # noqa: E402
import open_clip.factory  # noqa: E402
import anomalib  # noqa: E402
from anomalib.models.image.winclip import torch_model as winclip_tm  # noqa: E402
from anomalib.models.image.winclip.prompting import create_prompt_ensemble  # noqa: E402
from anomalib.models.image.winclip.utils import class_scores, make_masks  # noqa: E402

ROOT = HERE.parents[1]
FIX = ROOT / "tests" / "fixtures"
CKPT_DIR = FIX / "winclip_tiny"
WINCLIP_OUT = FIX / "winclip_tiny_expected.safetensors"
MUSC_OUT = FIX / "musc_tiny_expected.safetensors"

SEED = 20240725
torch.set_num_threads(2)
torch.manual_seed(SEED)
np.random.seed(SEED)
torch.set_default_dtype(torch.float32)

OPENCLIP_CONFIG = {
    "model_cfg": {
        "embed_dim": 48,
        "quick_gelu": False,
        "vision_cfg": {"image_size": 48, "layers": 3, "width": 64, "head_width": 16, "mlp_ratio": 4.0, "patch_size": 8},
        "text_cfg": {"context_length": 77, "vocab_size": 49408, "width": 16, "heads": 2, "layers": 2},
    },
    "preprocess_cfg": {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    },
}
TINY_NAME = "anoscope-winclip-tiny"  # registered in open_clip's model-config registry
CLASS_NAME = "bottle"
SURGERY_K = 2
MUSC_LAYERS = (1, 2, 3)  # hidden_state_i = output of block i (1-based)
MUSC_R = (1, 3, 5)
MUSC_TOPMIN_MAX = 0.3
MUSC_K = (1, 2, 3)  # RsCIN k_list of the official code for mvtec_ad (and the default)
IMAGE = 48
GRID = 6


def check(name, a, b, tol=1e-5):
    C.assert_close(name, a, b, tol)


# --------------------------------------------------------------------------
# Checkpoint
# --------------------------------------------------------------------------


def register_config():
    open_clip.factory._MODEL_CONFIGS[TINY_NAME] = copy.deepcopy(OPENCLIP_CONFIG["model_cfg"])


def build_checkpoint():
    print("== checkpoint tests/fixtures/winclip_tiny (float16) ==")
    if CKPT_DIR.exists():
        shutil.rmtree(CKPT_DIR)
    CKPT_DIR.mkdir(parents=True)
    model = open_clip.create_model(TINY_NAME, pretrained=None)
    assert type(model).__name__ == "CLIP", type(model)
    assert isinstance(model.text_projection, torch.nn.Parameter)
    D.reinit_(model, SEED + 20)
    sd = {k: v.detach().half().contiguous() for k, v in model.state_dict().items()}
    assert "attn_mask" not in sd
    # Same key set as the open_clip 3.3 fixture (hub layout) written by make_fixtures.py.
    with safe_open(str(FIX / "openclip_tiny" / "open_clip_model.safetensors"), "pt") as f:
        ref_keys = set(f.keys())
    assert set(sd) == ref_keys, set(sd) ^ ref_keys
    save_file(sd, str(CKPT_DIR / "open_clip_model.safetensors"))
    with open(CKPT_DIR / "open_clip_config.json", "w") as f:
        json.dump(OPENCLIP_CONFIG, f, indent=2)
        f.write("\n")
    on_disk = load_file(str(CKPT_DIR / "open_clip_model.safetensors"))
    assert all(v.dtype == torch.float16 for v in on_disk.values())
    print(f"  {len(on_disk)} tensors, all F16")


def load_tiny(output_tokens=False):
    """Fresh model through open_clip's own factory, weights re-loaded from disk
    (f16 -> f32), plus the factory's transforms."""
    with open(CKPT_DIR / "open_clip_config.json") as f:
        cfg = json.load(f)
    assert cfg == OPENCLIP_CONFIG
    pp = cfg["preprocess_cfg"]
    model, train_t, val_t = _ORIG_CMT(TINY_NAME, pretrained=None, image_mean=pp["mean"], image_std=pp["std"])
    sd = {k: v.float() for k, v in load_file(str(CKPT_DIR / "open_clip_model.safetensors")).items()}
    model.load_state_dict(sd, strict=True)
    model.visual.output_tokens = output_tokens
    return model.eval(), train_t, val_t


_ORIG_CMT = open_clip.create_model_and_transforms


@contextlib.contextmanager
def patched_factory():
    """anomalib calls open_clip.create_model_and_transforms("ViT-B-16-plus-240",
    pretrained="laion400m_e31"); return our tiny model instead."""

    def fake(model_name, pretrained=None, **kw):
        assert model_name == winclip_tm.BACKBONE == "ViT-B-16-plus-240", model_name
        assert pretrained == winclip_tm.PRETRAINED and not kw, (pretrained, kw)
        return load_tiny()

    assert winclip_tm.open_clip is open_clip
    open_clip.create_model_and_transforms = fake
    try:
        yield
    finally:
        open_clip.create_model_and_transforms = _ORIG_CMT


def winclip_model(reference_images=None):
    with patched_factory():
        m = winclip_tm.WinClipModel(class_name=CLASS_NAME, reference_images=reference_images,
                                    apply_transform=False)
    return m.eval()


# --------------------------------------------------------------------------
# Inputs
# --------------------------------------------------------------------------


def make_inputs():
    g = torch.Generator().manual_seed(SEED + 1)
    # WinCLIP: one shared "object" pattern + per-image variation; blobs in test images 1 and 3.
    base = D.smooth_fields(g, 1)
    px = base + 0.35 * D.smooth_fields(g, 4)
    D.add_blob_(px[1], 13.0, 30.0, 3.0, 2.5)
    D.add_blob_(px[3], 35.0, 12.0, 4.0, -2.5)  # a dark blob
    ref = base + 0.35 * D.smooth_fields(g, 2)
    # MuSc: 8 images of another shared pattern; local anomalies in images 2, 5 (and a weaker one in 6).
    # (Own generator; seed chosen so that RsCIN's top-k neighbour sets are unambiguous, see musc().)
    gm = torch.Generator().manual_seed(SEED + 102)
    mbase = D.smooth_fields(gm, 1)
    mpx = mbase + 0.5 * D.smooth_fields(gm, 8)
    D.add_blob_(mpx[2], 20.0, 27.0, 3.0, 3.0)
    D.add_blob_(mpx[5], 40.0, 8.0, 3.5, -3.0)
    D.add_blob_(mpx[6], 8.0, 40.0, 2.5, 1.5)
    return {"pixel_values": px, "ref_pixel_values": ref, "musc_pixel_values": mpx}


# --------------------------------------------------------------------------
# WinCLIP + fast dense mode
# --------------------------------------------------------------------------


def winclip_and_fast(inputs):
    print("== WinCLIP (anomalib) ==")
    px, ref = inputs["pixel_values"], inputs["ref_pixel_values"]
    normal_prompts, anomalous_prompts = create_prompt_ensemble(CLASS_NAME)
    assert (len(normal_prompts), len(anomalous_prompts)) == (147, 84), (len(normal_prompts), len(anomalous_prompts))

    zs_model = winclip_model()
    assert tuple(zs_model.grid_size) == (GRID, GRID) and zs_model.k_shot == 0
    assert zs_model.clip.visual.output_tokens is True
    # masks: [k*k, n_windows], columns = windows (row-major), rows = patches (row-major) == sliding_windows
    for s, mask in zip(zs_model.scales, zs_model.masks):
        assert torch.equal(mask, make_masks((GRID, GRID), s, 1))
        assert mask.T.tolist() == C.sliding_windows(GRID, s, 1), s
    assert [m.shape[1] for m in zs_model.masks] == [25, 16]

    model, _, _ = load_tiny()
    vw = C.vision_weights_from_open_clip(model)
    assert vw.act == "gelu" and vw.heads == 4 and vw.grid == GRID

    with torch.no_grad():
        # ---- text ensembles (anomalib) vs manual ----
        text = zs_model.text_embeddings.clone()
        assert text.shape == (2, 48)
        n_ids = open_clip.tokenize(normal_prompts)
        a_ids = open_clip.tokenize(anomalous_prompts)
        prompt_emb = model.encode_text(torch.cat([n_ids, a_ids]), normalize=False)
        man_text = torch.stack([prompt_emb[:147].mean(0), prompt_emb[147:].mean(0)])
        check("text ensembles (mean of UNnormalised)", man_text, text)
        norms = text.norm(dim=-1)
        print(f"  text_embeddings norms {norms.tolist()} (NOT L2-normalised), cos(n,a) = "
              f"{torch.nn.functional.cosine_similarity(text[0], text[1], dim=0).item():.4f}")

        # ---- zero-shot via anomalib ----
        zs_out = zs_model(px)
        img_emb, win_embs, patch_emb = zs_model.encode_image(px)
        assert patch_emb.shape == (4, 36, 64), patch_emb.shape  # ln_post'd, NOT projected
        assert [w.shape for w in win_embs] == [(4, 25, 48), (4, 16, 48)]
        zs_img = class_scores(img_emb, text, winclip_tm.TEMPERATURE, target_class=1)
        zs_grid = zs_model._compute_zero_shot_scores(zs_img, win_embs)
        check("anomalib forward pred_score == class_scores", zs_out.pred_score, zs_img, 0)
        check("anomalib maps == interp(zs grid)", zs_out.anomaly_map,
              D.upsample(zs_grid, IMAGE, align_corners=False), 0)
        ws2 = class_scores(win_embs[0], text, winclip_tm.TEMPERATURE, target_class=1)
        ws3 = class_scores(win_embs[1], text, winclip_tm.TEMPERATURE, target_class=1)

        # collapse check (open_clip >= 2.26 makes all windows of a scale equal)
        for s, w in zip((2, 3), win_embs):
            diff = (w[:, :, None, :] - w[:, None, :, :]).abs().amax(-1)  # [B, M, M]
            off = diff + torch.eye(w.shape[1]) * 1e9
            mn = off.amin().item()
            print(f"  windows scale {s}: min pairwise max|d| between different windows = {mn:.3e}")
            assert mn > 1e-3, "window embeddings collapsed"

        # ---- manual transcription of anomalib (zero-shot) ----
        man = D.winclip_manual(vw, px, text)
        check("manual image_emb", man["feat"]["image_emb"], img_emb)
        check("manual patch_emb (ln_post, no proj)", man["feat"]["patch_emb"], patch_emb)
        check("manual windows 2", man["feat"]["windows"][2], win_embs[0])
        check("manual windows 3", man["feat"]["windows"][3], win_embs[1])
        check("manual zs image scores", man["zs_image_scores"], zs_img)
        check("manual window scores 2", man["win_scores"][2], ws2)
        check("manual window scores 3", man["win_scores"][3], ws3)
        check("manual zs grid", man["zs_grid"], zs_grid)
        check("manual zs maps", man["maps"], zs_out.anomaly_map)

        out = {
            "pixel_values": px,
            "ref_pixel_values": ref,
            "text_embeddings": text,
            "normal_input_ids": n_ids.to(torch.int64),
            "anomalous_input_ids": a_ids.to(torch.int64),
            "image_embeddings": img_emb,
            "patch_embeddings": patch_emb,
            "window_embeddings_2": win_embs[0],
            "window_embeddings_3": win_embs[1],
            "zs_image_scores": zs_out.pred_score,
            "zs_window_scores_2": ws2,
            "zs_window_scores_3": ws3,
            "zs_grid_map": zs_grid,
            "zs_maps": zs_out.anomaly_map,
        }

        # ---- few-shot (1 and 2 references) ----
        for k in (1, 2):
            fs_model = winclip_model(reference_images=ref[:k])
            assert fs_model.k_shot == k
            assert fs_model.patch_embeddings.shape == (k, 36, 64)
            fs_out = fs_model(px)
            fs_grid = fs_model._compute_few_shot_scores(patch_emb, win_embs)
            comb = (zs_grid + fs_grid) / 2
            check(f"fs{k} anomalib maps == interp((zs+fs)/2)", fs_out.anomaly_map,
                  D.upsample(comb, IMAGE, align_corners=False), 0)
            check(f"fs{k} anomalib image == (zs + max fs)/2", fs_out.pred_score,
                  (zs_img + fs_grid.amax(dim=(-2, -1))) / 2, 0)
            man = D.winclip_manual(vw, px, text, ref[:k])
            check(f"manual fs{k} few-shot grid", man["fs_grid"], fs_grid)
            check(f"manual fs{k} maps", man["maps"], fs_out.anomaly_map)
            check(f"manual fs{k} image scores", man["image_scores"], fs_out.pred_score)
            out[f"fs{k}_image_scores"] = fs_out.pred_score
            out[f"fs{k}_maps"] = fs_out.anomaly_map
            out[f"fs{k}_fewshot_grid"] = fs_grid

        # ---- fast dense mode (CLIP Surgery v-v, K = 2) ----
        print("== fast dense mode ==")
        fast = D.fast_dense(vw, px, text, SURGERY_K)
        _, x_ori = C.surgery_forward(vw, px, SURGERY_K)
        lib_hs = D.open_clip_224_hidden_states(model, px)
        check("surgery normal path == library last hidden state", x_ori, lib_hs[-1])
        check("fast global uses library image embedding",
              D.anomaly_prob(model.encode_image(px), text), fast["global"])
        out.update(
            surgery_tokens=fast["surgery_tokens"],
            fast_global_scores=fast["global"],
            fast_grid=fast["grid"],
            fast_maps=fast["maps"],
            fast_image_scores=fast["image_scores"],
        )

    summary(out, ["zs_image_scores", "fs1_image_scores", "fs2_image_scores", "fast_image_scores"],
            ["zs_grid_map", "fs1_fewshot_grid", "fs2_fewshot_grid", "fast_grid", "zs_window_scores_2"])
    return out, normal_prompts, anomalous_prompts


# --------------------------------------------------------------------------
# MuSc
# --------------------------------------------------------------------------


def musc(inputs):
    print("== MuSc ==")
    px = inputs["musc_pixel_values"]
    model, _, _ = load_tiny()
    vw = C.vision_weights_from_open_clip(model)
    with torch.no_grad():
        hs = D.open_clip_224_hidden_states(model, px)
        man_hs = C.vision_forward(vw, px)["hidden_states"]
        for i, (a, b) in enumerate(zip(man_hs, hs)):
            check(f"hidden_state_{i} manual vs open_clip 2.24", a, b)
        cls = model.encode_image(px)  # proj(ln_post(class token)), not normalised
        layer_tokens = [hs[i] for i in MUSC_LAYERS]
        off = D.musc_official(layer_tokens, cls, IMAGE, MUSC_R, MUSC_TOPMIN_MAX, MUSC_K)
        sim = D.musc_simple(layer_tokens, cls, IMAGE, MUSC_R, MUSC_TOPMIN_MAX, MUSC_K)
        for k in ("patch_scores", "maps", "raw_scores", "scores"):
            check(f"musc official-style vs formula {k}", off[k].double(), sim[k])
        n = px.shape[0]
        # RsCIN keeps the k largest similarities per row: make sure the selection is unambiguous.
        srt = off["similarity"].sort(-1, descending=True).values
        gaps = [(srt[:, k - 1] - srt[:, k]).min().item() for k in MUSC_K]
        print(f"  RsCIN: min gap between k-th and (k+1)-th largest similarity, k={list(MUSC_K)}: "
              f"{[f'{g:.2e}' for g in gaps]}")
        assert min(gaps) > 1e-3
        assert torch.equal(srt[:, 0], off["similarity"].diagonal()), "self is not the top-1 neighbour"
        print(f"  MSM: n = {n} images, k = int((n-1)*{MUSC_TOPMIN_MAX}) = {int((n - 1) * MUSC_TOPMIN_MAX)}")
        print(f"  class-embedding cosine similarity range: {off['similarity'].min().item():.3f} .. "
              f"{(off['similarity'] - 9 * torch.eye(n)).max().item():.3f} (off-diagonal)")

    grid = off["patch_scores"].float().reshape(n, GRID, GRID)
    out = {
        "musc_pixel_values": px,
        "musc_image_embeds": off["cls"].float(),
        "musc_similarity": (off["cls"] @ off["cls"].T).float(),
        "musc_msm_per_r_layer": off["msm_per_r_layer"].float(),
        "msm_patch_scores": off["patch_scores"].float(),
        "musc_grid": grid,
        "musc_maps": off["maps"].float(),
        "musc_image_scores_raw": off["raw_scores"].float(),
        "musc_rscin_per_k": off["scores_per_k"].float(),
        "musc_image_scores": off["scores"].float(),
    }
    for r in MUSC_R:
        out[f"musc_lnamd_r{r}"] = off["lnamd"][r][:1].float()  # image 0 only (size budget)
    summary(out, ["musc_image_scores_raw", "musc_image_scores"], ["musc_grid"])
    for i in range(n):
        am = int(grid[i].flatten().argmax())
        print(f"    image {i}: grid argmax at (row {am // GRID}, col {am % GRID}), max {grid[i].max().item():.4f}, "
              f"mean {grid[i].mean().item():.4f}")
    return out


# --------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------


def summary(out, vecs, grids):
    for k in vecs:
        print(f"  {k:<24s} {[round(v, 4) for v in out[k].tolist()]}")
    for k in grids:
        v = out[k]
        print(f"  {k:<24s} min {v.min().item():.4f} max {v.max().item():.4f} mean {v.mean().item():.4f}")


def versions():
    return {
        "torch": torch.__version__,
        "open_clip": OPEN_CLIP_VERSION,
        "anomalib": anomalib.__version__,
        "numpy": np.__version__,
    }


def save(path: Path, tensors: dict, extra: dict):
    tensors = {k: v.detach().contiguous() for k, v in tensors.items()}
    info = {"generator": "tests/reference/make_detection_fixtures.py", **versions(), **extra}
    save_file(tensors, str(path), metadata={"info": json.dumps(info, ensure_ascii=False, sort_keys=True)})
    print(f"wrote {path.relative_to(ROOT)} ({path.stat().st_size / 1e3:.1f} kB)")
    for k, v in tensors.items():
        print(f"  {k:<26s} {str(v.dtype):<14s} {list(v.shape)}")


def main():
    print(f"torch {torch.__version__}, open_clip {OPEN_CLIP_VERSION}, anomalib {anomalib.__version__}")
    major, minor = (int(x) for x in OPEN_CLIP_VERSION.split(".")[:2])
    assert (major, minor) < (2, 26), "open_clip >= 2.26 breaks anomalib's WinCLIP windows (batch-first transformer)"
    register_config()
    build_checkpoint()
    inputs = make_inputs()
    win, normal_prompts, anomalous_prompts = winclip_and_fast(inputs)
    mus = musc(inputs)
    save(WINCLIP_OUT, win, {
        "class_name": CLASS_NAME, "temperature": winclip_tm.TEMPERATURE, "scales": [2, 3],
        "surgery_k": SURGERY_K, "normal_prompts": normal_prompts, "anomalous_prompts": anomalous_prompts,
    })
    save(MUSC_OUT, mus, {
        "layers": list(MUSC_LAYERS), "r_list": list(MUSC_R), "topmin_min": 0, "topmin_max": MUSC_TOPMIN_MAX,
        "rscin_k_list": list(MUSC_K), "upsample": "bilinear align_corners=True", "gaussian_smoothing": None,
    })
    files = sorted(p for p in CKPT_DIR.rglob("*") if p.is_file()) + [WINCLIP_OUT, MUSC_OUT]
    total = sum(p.stat().st_size for p in files)
    for p in files:
        print(f"  sha256 {hashlib.sha256(p.read_bytes()).hexdigest()[:16]}  {p.stat().st_size:>9d}  {p.relative_to(ROOT)}")
    print(f"new detection fixtures total: {total / 1e6:.2f} MB")
    assert total <= 3_000_000, "detection fixtures exceed 3 MB"


if __name__ == "__main__":
    main()
