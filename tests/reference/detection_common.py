"""Plain-PyTorch transcriptions of anoscope's detection modes (reference side).

Used by make_detection_fixtures.py.  Everything here works on the
layout-neutral `VisionWeights` of common.py (token 0 = class token, tokens
1..N = patches row-major, `proj` [D, P] applied as `x @ proj`).

* WinCLIP (`winclip_*`): an independent transcription of anomalib 2.7.0's
  WinClipModel maths; the fixture script asserts it reproduces anomalib's own
  outputs, which is what makes DETECTION.md's formulas trustworthy.
* Fast dense mode (`fast_dense`): anoscope's own CLIP-Surgery based scoring.
* MuSc (`musc_official`, `musc_simple`): two transcriptions of the official
  MuSc code (xrli-U/MuSc, models/musc.py + models/modules/_LNAMD.py,
  _MSM.py, _RsCIN.py): one that mirrors the official tensor manipulations
  step by step (Unfold / adaptive_avg_pool1d / cdist / double topk / MMO),
  one written from the plain formulas in DETECTION.md.  The script asserts
  they agree.
"""

from __future__ import annotations

import math
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F
from torch import nn

import common as C

TEMPERATURE = 0.07

# --------------------------------------------------------------------------
# Random re-initialisation (same policy as make_fixtures.reinit_)
# --------------------------------------------------------------------------


def reinit_(model: nn.Module, seed: int) -> None:
    """Overwrite every parameter with non-trivial random values (the policy of
    tests/reference/README.md "Random initialisation")."""
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
                elif pname.endswith("bias"):
                    v = 0.1 * randn(shape)
                elif isinstance(mod, (nn.Linear, nn.Conv2d)) and pname == "weight":
                    v = randn(shape) / math.sqrt(math.prod(shape[1:]))
                elif pname == "in_proj_weight":
                    v = randn(shape) / math.sqrt(shape[1])
                elif pname in ("proj", "text_projection"):
                    v = randn(shape) / math.sqrt(shape[0])
                else:
                    raise ValueError(f"no init rule for {full} {tuple(shape)} in {type(mod).__name__}")
                p.copy_(v)
    assert len(seen) == len(list(model.parameters()))


# --------------------------------------------------------------------------
# Inputs: smooth random fields (+ local bright blobs), already normalised
# --------------------------------------------------------------------------


def smooth_fields(g: torch.Generator, n: int, size: int = 48, low: int = 6, noise: float = 0.1):
    """n x 3 x size x size: a bicubic-upsampled low-res N(0,1) field plus a
    little white noise."""
    base = torch.randn(n, 3, low, low, generator=g)
    x = F.interpolate(base, size=(size, size), mode="bicubic", align_corners=False)
    return x + noise * torch.randn(n, 3, size, size, generator=g)


def add_blob_(img, cy: float, cx: float, sigma: float, amp: float):
    """In place: img [3, H, W] += amp * exp(-d^2 / (2 sigma^2)) on every channel."""
    h, w = img.shape[-2:]
    yy = torch.arange(h, dtype=torch.float32).view(h, 1)
    xx = torch.arange(w, dtype=torch.float32).view(1, w)
    img += amp * torch.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sigma ** 2))
    return img


# --------------------------------------------------------------------------
# open_clip 2.24 library forward (sequence-first transformer!)
# --------------------------------------------------------------------------


def open_clip_224_hidden_states(model, pixels) -> List[torch.Tensor]:
    """[after ln_pre, out of block 1, ..., out of block L], each [B, 1+N, D],
    computed with open_clip 2.24's own modules.  In 2.24 the Transformer /
    ResidualAttentionBlock are sequence-first (LND), so tokens are permuted
    around every block exactly as VisionTransformer.forward does."""
    v = model.visual
    x = v.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + v.positional_embedding
    x = v.ln_pre(v.patch_dropout(x))
    hs = [x]
    x = x.permute(1, 0, 2)
    for r in v.transformer.resblocks:
        x = r(x)
        hs.append(x.permute(1, 0, 2))
    return hs


# --------------------------------------------------------------------------
# Shared scoring helpers
# --------------------------------------------------------------------------


def cos_matrix(a, b):
    """a [..., M, P], b [K, P] -> [..., M, K] cosine similarities."""
    return F.normalize(a, dim=-1) @ F.normalize(b, dim=-1).transpose(-1, -2)


def anomaly_prob(emb, text, temperature=TEMPERATURE):
    """softmax([cos(e, t_normal), cos(e, t_anomalous)] / T)[1]; emb [..., P], text [2, P]."""
    return (cos_matrix(emb, text) / temperature).softmax(-1)[..., 1]


def harmonic_aggregate(window_scores, windows: Sequence[Sequence[int]], grid: int):
    """window_scores [B, M] -> [B, grid, grid]: per patch, the harmonic mean of
    the scores of all windows that contain it (count / sum(1/s)); a patch with
    an infinite reciprocal sum (a zero score) gets 0 (anomalib nan_to_num)."""
    b = window_scores.shape[0]
    inv = torch.zeros(b, grid * grid, dtype=window_scores.dtype)
    cnt = torch.zeros(grid * grid, dtype=window_scores.dtype)
    for m, win in enumerate(windows):
        for p in win:
            inv[:, p] += 1.0 / window_scores[:, m]
            cnt[p] += 1
    out = cnt / inv
    return out.nan_to_num(posinf=0.0).reshape(b, grid, grid)


def visual_association(emb, ref):
    """emb [B, M, F], ref [K, M', F] -> [B, M]: min over ALL reference vectors
    (every position of every reference image) of (1 - cos) / 2."""
    ref = ref.reshape(-1, emb.shape[-1])
    return ((1 - cos_matrix(emb, ref)).min(-1).values) / 2


def upsample(grid_maps, size: int, align_corners: bool):
    """[B, g, g] -> [B, size, size] bilinear."""
    return F.interpolate(grid_maps.unsqueeze(1), size=(size, size), mode="bilinear",
                         align_corners=align_corners).squeeze(1)


# --------------------------------------------------------------------------
# WinCLIP (anomalib 2.7.0 maths), manual transcription
# --------------------------------------------------------------------------


def winclip_features(vw: C.VisionWeights, pixels, scales=(2, 3)):
    """image_emb [B,P] (proj(ln_post(cls))), patch_emb [B,N,D] (ln_post of the
    patch tokens, NOT projected), windows {scale: [B,M,P]}, window lists."""
    out = C.vision_forward(vw, pixels)
    lhs = out["last_hidden_state"]
    grid = pixels.shape[-1] // vw.patch_size
    win_lists = {s: C.sliding_windows(grid, s, 1) for s in scales}
    return {
        "image_emb": out["image_embeds"],
        "patch_emb": C.layer_norm(lhs[:, 1:], vw.ln_post_w, vw.ln_post_b, vw.eps),
        "windows": {s: C.window_forward(vw, pixels, win_lists[s]) for s in scales},
        "win_lists": win_lists,
        "grid": grid,
    }


def winclip_zero_shot(feat, text):
    grid = feat["grid"]
    image_scores = anomaly_prob(feat["image_emb"], text)  # [B]
    maps = [image_scores.view(-1, 1, 1).expand(-1, grid, grid)]
    win_scores = {}
    for s, emb in feat["windows"].items():
        ws = anomaly_prob(emb, text)  # [B, M]
        win_scores[s] = ws
        maps.append(harmonic_aggregate(ws, feat["win_lists"][s], grid))
    zs = len(maps) / sum(1.0 / m for m in maps)
    return image_scores, win_scores, zs


def winclip_few_shot(feat, ref_feat):
    grid = feat["grid"]
    maps = [visual_association(feat["patch_emb"], ref_feat["patch_emb"]).reshape(-1, grid, grid)]
    for s, emb in feat["windows"].items():
        va = visual_association(emb, ref_feat["windows"][s])
        maps.append(harmonic_aggregate(va, feat["win_lists"][s], grid))
    return torch.stack(maps).mean(0)


def winclip_manual(vw, pixels, text, ref_pixels=None):
    feat = winclip_features(vw, pixels)
    image_scores, win_scores, zs = winclip_zero_shot(feat, text)
    out = {"feat": feat, "zs_image_scores": image_scores, "win_scores": win_scores, "zs_grid": zs}
    grid_map, img = zs, image_scores
    if ref_pixels is not None:
        fs = winclip_few_shot(feat, winclip_features(vw, ref_pixels))
        out["fs_grid"] = fs
        grid_map = (zs + fs) / 2
        img = (image_scores + fs.amax(dim=(-2, -1))) / 2
    out["image_scores"] = img
    out["maps"] = upsample(grid_map, pixels.shape[-1], align_corners=False)
    return out


# --------------------------------------------------------------------------
# Fast dense mode (CLIP Surgery v-v tokens)
# --------------------------------------------------------------------------


def fast_dense(vw: C.VisionWeights, pixels, text, k: int = 2):
    tokens, _ = C.surgery_forward(vw, pixels, k)  # [B, N, P]
    grid = pixels.shape[-1] // vw.patch_size
    p = anomaly_prob(tokens, text).reshape(-1, grid, grid)
    g = anomaly_prob(C.vision_forward(vw, pixels)["image_embeds"], text)
    return {
        "surgery_tokens": tokens,
        "grid": p,
        "maps": upsample(p, pixels.shape[-1], align_corners=False),
        "global": g,
        "image_scores": (g + p.amax(dim=(-2, -1))) / 2,
    }


# --------------------------------------------------------------------------
# MuSc, transcription 1: mirrors the official code step by step
# --------------------------------------------------------------------------


def _lnamd_official(layer_tokens: List[torch.Tensor], r: int) -> torch.Tensor:
    """models/modules/_LNAMD.py LNAMD._embed with feature_dim = D.
    layer_tokens: list over layers of [B, 1+N, D] (raw block outputs).
    Returns [B, N, layers, D] (before the L2 normalisation done in musc.py)."""
    b = layer_tokens[0].shape[0]
    d = layer_tokens[0].shape[-1]
    feats = []
    for t in layer_tokens:
        t = t[:, 1:, :]
        g = int(math.sqrt(t.shape[1]))
        t = t.reshape(b, g, g, d).permute(0, 3, 1, 2)
        t = nn.LayerNorm([d, g, g])(t)  # fresh LayerNorm: weight 1, bias 0, eps 1e-5
        feats.append(t)
    if r != 1:
        pad = int((r - 1) / 2)
        unfold = nn.Unfold(kernel_size=r, stride=1, padding=pad, dilation=1)
        out = []
        for t in feats:
            u = unfold(t)  # [B, D*r*r, N]
            u = u.reshape(b, d, r, r, -1).permute(0, 4, 1, 2, 3)  # [B, N, D, r, r]
            out.append(u)
        feats = out
    else:
        feats = [t.reshape(b, d, -1, 1, 1).permute(0, 2, 1, 3, 4) for t in feats]
    feats = [t.reshape(-1, *t.shape[-3:]) for t in feats]  # [B*N, D, r, r]
    # MeanMapper: flatten (D, r, r) channel-major and adaptive-average-pool to D
    mapped = [F.adaptive_avg_pool1d(t.reshape(len(t), 1, -1), d).squeeze(1) for t in feats]
    z = torch.stack(mapped, dim=1)  # [B*N, layers, D]
    return z.reshape(b, -1, *z.shape[-2:])


def _msm_official(z: torch.Tensor, topmin_min=0.0, topmin_max=0.3) -> torch.Tensor:
    """models/modules/_MSM.py MSM with compute_scores_fast.  z [n, L, C] ->
    [n, L] float64."""
    n, L, c = z.shape
    rows = []
    for i in range(n):
        z_ref = torch.cat((z[:i], z[i + 1:]), dim=0)
        p2i = torch.cdist(z[i:i + 1], z_ref.reshape(-1, c)).reshape(L, n - 1, L)
        p2i = torch.min(p2i, -1)[0]  # [L, n-1]
        k_max, k_min = topmin_max, topmin_min
        if k_max < 1:
            k_max = int(p2i.shape[1] * k_max)
        if k_min < 1:
            k_min = int(p2i.shape[1] * k_min)
        if k_max < k_min:
            k_max, k_min = k_min, k_max
        vals, _ = torch.topk(p2i.float(), k_max, largest=False, sorted=True)
        vals, _ = torch.topk(vals.float(), k_max - k_min, largest=True, sorted=True)
        rows.append(torch.mean(vals, dim=1).double().unsqueeze(0))
    return torch.cat(rows, 0)


def _rscin_official(scores_old, cls_tokens, k_list=(1, 2, 3)):
    """models/modules/_RsCIN.py RsCIN + MMO.  scores_old float64 [n],
    cls_tokens float32 [n, P] (L2-normalised).  Returns (final, per_k [len(k), n])."""
    scores = (scores_old - scores_old.min()) / (scores_old.max() - scores_old.min())
    w = (cls_tokens @ cls_tokens.T).float()
    score = scores.clone().float()
    s_list = []
    for k in k_list:
        _, topk_matrix = torch.topk(w.float(), w.shape[0] - k, largest=False, sorted=True)
        w_mask = w.clone()
        for i in range(w.shape[0]):
            w_mask[i, topk_matrix[i]] = 0
        n = w.shape[-1]
        d_ = torch.zeros_like(w).float()
        for i in range(n):
            d_[i, i] = 1 / (w_mask[i, :].sum())
        p = d_ @ w_mask
        s_list.append(p @ score.unsqueeze(-1))
    per_k = torch.cat(s_list, -1)  # [n, len(k)]
    return per_k.mean(-1), per_k.T


def musc_official(layer_tokens: List[torch.Tensor], cls_embeds, image_size: int,
                  r_list=(1, 3, 5), topmin_max=0.3, k_list=(1, 2, 3)) -> Dict[str, torch.Tensor]:
    """models/musc.py MuSc.make_category_data for one category (divide_num 1).
    layer_tokens: list over the selected layers of [n, 1+N, D] raw block
    outputs; cls_embeds: [n, P] projected class embeddings (normalised here)."""
    cls = cls_embeds / cls_embeds.norm(dim=-1, keepdim=True)
    lnamd, per = {}, []
    maps_r = []
    for r in r_list:
        feats = _lnamd_official(layer_tokens, r)
        feats = feats / feats.norm(dim=-1, keepdim=True)
        lnamd[r] = feats
        maps_l = []
        for l in range(len(layer_tokens)):
            maps_l.append(_msm_official(feats[:, :, l, :], 0, topmin_max))
        per.append(torch.stack(maps_l))
        maps_r.append(torch.stack(maps_l).mean(0))
    patch = torch.stack(maps_r).mean(0)  # [n, N] float64
    n, L = patch.shape
    h = int(math.sqrt(L))
    maps = F.interpolate(patch.view(n, 1, h, h), size=image_size, mode="bilinear", align_corners=True)
    ac = maps.reshape(n, -1).max(-1).values
    final, per_k = _rscin_official(ac, cls.float(), k_list)
    return {
        "lnamd": lnamd,
        "msm_per_r_layer": torch.stack(per),  # [len(r), layers, n, N]
        "patch_scores": patch,
        "maps": maps.squeeze(1),
        "raw_scores": ac,
        "scores": final,
        "scores_per_k": per_k,
        "cls": cls,
        "similarity": cls @ cls.T,
    }


# --------------------------------------------------------------------------
# MuSc, transcription 2: from the plain formulas of DETECTION.md
# --------------------------------------------------------------------------


def musc_simple(layer_tokens, cls_embeds, image_size, r_list=(1, 3, 5), frac=0.3, k_list=(1, 2, 3)):
    n = layer_tokens[0].shape[0]
    g = int(math.sqrt(layer_tokens[0].shape[1] - 1))
    k_img = int((n - 1) * frac)
    assert k_img >= 1
    total = torch.zeros(n, g * g, dtype=torch.float64)
    for r in r_list:
        for t in layer_tokens:
            x = t[:, 1:, :].double()  # [n, N, D]
            mu = x.mean(dim=(1, 2), keepdim=True)
            var = x.var(dim=(1, 2), unbiased=False, keepdim=True)
            x = (x - mu) / torch.sqrt(var + 1e-5)
            x = x.transpose(1, 2).reshape(n, -1, g, g)  # [n, D, g, g]
            x = F.avg_pool2d(x, r, stride=1, padding=r // 2, count_include_pad=True)  # zero-padded mean
            z = x.reshape(n, -1, g * g).transpose(1, 2)  # [n, N, D]
            z = z / z.norm(dim=-1, keepdim=True)
            # dist[i, p, j] = min_q || z_i[p] - z_j[q] ||
            diff = z[:, :, None, None, :] - z[None, None, :, :, :]  # [n, N, n, N, D]
            dist = diff.norm(dim=-1).amin(-1)  # [n, N, n]
            scores = torch.empty(n, g * g, dtype=torch.float64)
            for i in range(n):
                others = torch.cat([dist[i, :, :i], dist[i, :, i + 1:]], -1)  # [N, n-1]
                scores[i] = others.sort(-1).values[:, :k_img].mean(-1)
            total += scores
    patch = total / (len(r_list) * len(layer_tokens))
    maps = upsample(patch.reshape(n, g, g), image_size, align_corners=True)
    ac = maps.reshape(n, -1).amax(-1)
    s = (ac - ac.min()) / (ac.max() - ac.min())
    c = cls_embeds.double()
    c = c / c.norm(dim=-1, keepdim=True)
    w = c @ c.T
    outs = []
    for k in k_list:
        idx = w.argsort(-1, descending=True)[:, :k]
        wk = torch.gather(w, 1, idx)
        outs.append((wk * s[idx]).sum(-1) / wk.sum(-1))
    return {"patch_scores": patch, "maps": maps, "raw_scores": ac, "scores": torch.stack(outs).mean(0)}
