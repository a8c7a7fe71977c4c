"""Shared reference code for anoscope's Python fixture / check scripts.

Everything here is plain PyTorch operating on a layout-neutral view of a CLIP
*vision tower* (`VisionWeights`).  Two extractors build that view from the
reference libraries' models (transformers' `CLIPModel`, open_clip's `CLIP`),
and the manual forward passes below are then checked against the libraries'
own forward passes (see make_fixtures.py), which is what makes the manual
transcriptions of the non-library paths (CLIP Surgery v-v attention, WinCLIP
token-subset windows) trustworthy.

Conventions (shared with the Rust side):
  * B = batch, N = number of patches (grid*grid), D = vision width,
    P = projection (embedding) dim.
  * token 0 is the class token, tokens 1..N are patches in row-major order.
  * `proj` is stored as [D, P] and applied as `x @ proj` (open_clip
    convention; for transformers it is `visual_projection.weight.T`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------
# Layout-neutral weights
# --------------------------------------------------------------------------


@dataclass
class Block:
    """One pre-LN transformer block.  qkv_w is the fused in-projection [3D, D]
    (rows: q, then k, then v), i.e. open_clip's `attn.in_proj_weight`."""

    ln1_w: torch.Tensor
    ln1_b: torch.Tensor
    qkv_w: torch.Tensor
    qkv_b: torch.Tensor
    out_w: torch.Tensor
    out_b: torch.Tensor
    ln2_w: torch.Tensor
    ln2_b: torch.Tensor
    fc1_w: torch.Tensor
    fc1_b: torch.Tensor
    fc2_w: torch.Tensor
    fc2_b: torch.Tensor


@dataclass
class VisionWeights:
    patch_w: torch.Tensor  # [D, 3, p, p] conv weight, no bias
    class_emb: torch.Tensor  # [D]
    pos_emb: torch.Tensor  # [1 + N, D]
    ln_pre_w: torch.Tensor
    ln_pre_b: torch.Tensor
    blocks: List[Block]
    ln_post_w: torch.Tensor
    ln_post_b: torch.Tensor
    proj: torch.Tensor  # [D, P]
    heads: int
    act: str  # "quick_gelu" or "gelu" (exact, erf)
    eps: float = 1e-5
    # How to resize pos_emb for a different grid: (mode, antialias).
    # transformers: ("bicubic", False); open_clip resize_pos_embed: ("bicubic", True).
    interp: tuple = field(default=("bicubic", False))

    @property
    def patch_size(self) -> int:
        return self.patch_w.shape[-1]

    @property
    def width(self) -> int:
        return self.patch_w.shape[0]

    @property
    def grid(self) -> int:
        return int(round(math.sqrt(self.pos_emb.shape[0] - 1)))


def vision_weights_from_hf(model) -> VisionWeights:
    """transformers.CLIPModel -> VisionWeights."""
    vm = model.vision_model
    cfg = model.config.vision_config
    blocks = []
    for layer in vm.encoder.layers:
        a = layer.self_attn
        blocks.append(
            Block(
                ln1_w=layer.layer_norm1.weight, ln1_b=layer.layer_norm1.bias,
                qkv_w=torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight], 0),
                qkv_b=torch.cat([a.q_proj.bias, a.k_proj.bias, a.v_proj.bias], 0),
                out_w=a.out_proj.weight, out_b=a.out_proj.bias,
                ln2_w=layer.layer_norm2.weight, ln2_b=layer.layer_norm2.bias,
                fc1_w=layer.mlp.fc1.weight, fc1_b=layer.mlp.fc1.bias,
                fc2_w=layer.mlp.fc2.weight, fc2_b=layer.mlp.fc2.bias,
            )
        )
    emb = vm.embeddings
    return VisionWeights(
        patch_w=emb.patch_embedding.weight,
        class_emb=emb.class_embedding,
        pos_emb=emb.position_embedding.weight,
        ln_pre_w=vm.pre_layrnorm.weight, ln_pre_b=vm.pre_layrnorm.bias,
        blocks=blocks,
        ln_post_w=vm.post_layernorm.weight, ln_post_b=vm.post_layernorm.bias,
        proj=model.visual_projection.weight.t(),
        heads=cfg.num_attention_heads,
        act=cfg.hidden_act,
        eps=cfg.layer_norm_eps,
        interp=("bicubic", False),
    )


def vision_weights_from_open_clip(model) -> VisionWeights:
    """open_clip.CLIP -> VisionWeights (standard ViT tower, tok pooling)."""
    v = model.visual
    assert v.attn_pool is None and v.pool_type == "tok" and not v.final_ln_after_pool
    blocks = []
    for r in v.transformer.resblocks:
        assert isinstance(r.ls_1, nn.Identity), "layer scale not supported"
        blocks.append(
            Block(
                ln1_w=r.ln_1.weight, ln1_b=r.ln_1.bias,
                qkv_w=r.attn.in_proj_weight, qkv_b=r.attn.in_proj_bias,
                out_w=r.attn.out_proj.weight, out_b=r.attn.out_proj.bias,
                ln2_w=r.ln_2.weight, ln2_b=r.ln_2.bias,
                fc1_w=r.mlp.c_fc.weight, fc1_b=r.mlp.c_fc.bias,
                fc2_w=r.mlp.c_proj.weight, fc2_b=r.mlp.c_proj.bias,
            )
        )
    gelu = v.transformer.resblocks[0].mlp.gelu
    # open_clip's QuickGELU is its own class; nn.GELU(approximate='none') is exact erf GELU.
    if type(gelu).__name__ == "QuickGELU":
        act = "quick_gelu"
    else:
        assert isinstance(gelu, nn.GELU) and gelu.approximate == "none", gelu
        act = "gelu"
    return VisionWeights(
        patch_w=v.conv1.weight,
        class_emb=v.class_embedding,
        pos_emb=v.positional_embedding,
        ln_pre_w=v.ln_pre.weight, ln_pre_b=v.ln_pre.bias,
        blocks=blocks,
        ln_post_w=v.ln_post.weight, ln_post_b=v.ln_post.bias,
        proj=v.proj,
        heads=v.transformer.resblocks[0].attn.num_heads,
        act=act,
        eps=v.ln_pre.eps,
        interp=("bicubic", True),
    )


# --------------------------------------------------------------------------
# Plain-PyTorch building blocks
# --------------------------------------------------------------------------


def layer_norm(x, w, b, eps):
    return F.layer_norm(x, (x.shape[-1],), w, b, eps)


def activation(x, act: str):
    if act == "quick_gelu":
        return x * torch.sigmoid(1.702 * x)
    if act == "gelu":
        return F.gelu(x)  # exact (erf) GELU
    raise ValueError(act)


def split_heads(t, heads):
    """[B, L, D] -> [B, H, L, D/H]"""
    b, l, d = t.shape
    return t.reshape(b, l, heads, d // heads).transpose(1, 2)


def merge_heads(t):
    """[B, H, L, hd] -> [B, L, H*hd]"""
    b, h, l, hd = t.shape
    return t.transpose(1, 2).reshape(b, l, h * hd)


def qkv(h, blk: Block, heads: int):
    """In-projection (with bias) of the LayerNormed stream, split into heads."""
    q, k, v = F.linear(h, blk.qkv_w, blk.qkv_b).chunk(3, dim=-1)
    return split_heads(q, heads), split_heads(k, heads), split_heads(v, heads)


def attend(a, b, v, scale):
    """softmax(a b^T * scale) v, per head."""
    w = torch.softmax(a @ b.transpose(-1, -2) * scale, dim=-1)
    return w @ v


def mlp(x, blk: Block, act: str):
    return F.linear(activation(F.linear(x, blk.fc1_w, blk.fc1_b), act), blk.fc2_w, blk.fc2_b)


def block_forward(x, blk: Block, heads: int, act: str, eps: float):
    """Standard pre-LN CLIP block (full attention, no mask)."""
    h = layer_norm(x, blk.ln1_w, blk.ln1_b, eps)
    q, k, v = qkv(h, blk, heads)
    scale = q.shape[-1] ** -0.5
    x = x + F.linear(merge_heads(attend(q, k, v, scale)), blk.out_w, blk.out_b)
    x = x + mlp(layer_norm(x, blk.ln2_w, blk.ln2_b, eps), blk, act)
    return x


def resize_pos_emb(pos_emb, new_grid: int, mode="bicubic", antialias=False):
    """[1+N, D] -> [1+new_grid^2, D]; class position kept, patch grid resized
    with F.interpolate(align_corners=False) exactly like both libraries do."""
    old_grid = int(round(math.sqrt(pos_emb.shape[0] - 1)))
    if old_grid == new_grid:
        return pos_emb
    cls, grid = pos_emb[:1], pos_emb[1:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_grid, old_grid, d).permute(0, 3, 1, 2)
    grid = F.interpolate(grid, size=(new_grid, new_grid), mode=mode, align_corners=False, antialias=antialias)
    grid = grid.permute(0, 2, 3, 1).reshape(new_grid * new_grid, d)
    return torch.cat([cls, grid], 0)


def embed(vw: VisionWeights, pixels):
    """Token embeddings BEFORE ln_pre: cat(class, conv1 patches) + pos.
    Position embeddings are resized (with the layout's own mode) when the
    input grid differs from the checkpoint's."""
    x = F.conv2d(pixels, vw.patch_w, stride=vw.patch_size)  # [B, D, g, g]
    b, d, gh, gw = x.shape
    assert gh == gw, "square inputs only"
    x = x.reshape(b, d, gh * gw).transpose(1, 2)
    x = torch.cat([vw.class_emb.reshape(1, 1, d).expand(b, 1, d), x], 1)
    mode, aa = vw.interp
    return x + resize_pos_emb(vw.pos_emb, gh, mode, aa)


def head(vw: VisionWeights, x):
    """Final LayerNorm + projection of any tokens [.., D] -> [.., P]."""
    return layer_norm(x, vw.ln_post_w, vw.ln_post_b, vw.eps) @ vw.proj


# --------------------------------------------------------------------------
# Forward passes
# --------------------------------------------------------------------------


def vision_forward(vw: VisionWeights, pixels):
    """Standard forward.  Returns dict with
    hidden_states: list, [0] = after ln_pre, [i] = output of block i;
    last_hidden_state: final block output (before ln_post);
    image_embeds [B, P] (class token, not L2-normalised);
    patch_tokens [B, N, P]."""
    x = layer_norm(embed(vw, pixels), vw.ln_pre_w, vw.ln_pre_b, vw.eps)
    hs = [x]
    for blk in vw.blocks:
        x = block_forward(x, blk, vw.heads, vw.act, vw.eps)
        hs.append(x)
    return {
        "hidden_states": hs,
        "last_hidden_state": x,
        "image_embeds": head(vw, x[:, 0]),
        "patch_tokens": head(vw, x[:, 1:]),
    }


def surgery_forward(vw: VisionWeights, pixels, k: int):
    """CLIP Surgery value-to-value dense path ("dual path"), plain PyTorch.

    Blocks 0..L-K-1 run normally.  For each of the last K blocks, with x_ori
    the normal residual stream (s initialised to x_ori at the input of the
    first of those K blocks):
        h = ln_1(x_ori); q, k, v = in_proj(h) (with bias), split in heads
        normal : x_ori += out_proj(softmax(q k^T / sqrt(hd)) v)
                 x_ori += mlp(ln_2(x_ori))
        surgery: s     += out_proj(softmax(v v^T / sqrt(hd)) v)   (no MLP)
    Result: proj(ln_post(s[:, 1:]))  -> [B, N, P]; also returns x_ori.
    """
    n = len(vw.blocks)
    assert 1 <= k <= n
    x = layer_norm(embed(vw, pixels), vw.ln_pre_w, vw.ln_pre_b, vw.eps)
    for blk in vw.blocks[: n - k]:
        x = block_forward(x, blk, vw.heads, vw.act, vw.eps)
    s = x
    for blk in vw.blocks[n - k:]:
        h = layer_norm(x, blk.ln1_w, blk.ln1_b, vw.eps)
        q, kk, v = qkv(h, blk, vw.heads)
        scale = q.shape[-1] ** -0.5
        # surgery path uses this block's v (computed from the ORIGINAL stream)
        s = s + F.linear(merge_heads(attend(v, v, v, scale)), blk.out_w, blk.out_b)
        # normal path
        x = x + F.linear(merge_heads(attend(q, kk, v, scale)), blk.out_w, blk.out_b)
        x = x + mlp(layer_norm(x, blk.ln2_w, blk.ln2_b, vw.eps), blk, vw.act)
    return head(vw, s[:, 1:]), x


def sliding_windows(grid: int, size: int, stride: int = 1) -> List[List[int]]:
    """Square windows of `size` x `size` patches with `stride`, windows in
    row-major order, patch indices (row*grid+col, 0-based) row-major inside."""
    out = []
    for r in range(0, grid - size + 1, stride):
        for c in range(0, grid - size + 1, stride):
            out.append([(r + i) * grid + (c + j) for i in range(size) for j in range(size)])
    return out


def window_forward(vw: VisionWeights, pixels, windows: Sequence[Sequence[int]]):
    """WinCLIP token-subset passes (anomalib `_get_window_embeddings`):
    for each window select tokens [0] + [p+1 for p in window] of the
    embeddings BEFORE ln_pre, then ln_pre -> all blocks (full attention among
    the selected tokens) -> ln_post(class token) -> proj.
    Returns [B, M, P]."""
    x = embed(vw, pixels)
    outs = []
    for win in windows:
        idx = torch.tensor([0] + [p + 1 for p in win], dtype=torch.long)
        t = layer_norm(x[:, idx], vw.ln_pre_w, vw.ln_pre_b, vw.eps)
        for blk in vw.blocks:
            t = block_forward(t, blk, vw.heads, vw.act, vw.eps)
        outs.append(head(vw, t[:, 0]))
    return torch.stack(outs, 1)


# --------------------------------------------------------------------------
# Library forwards (the references the manual code is checked against)
# --------------------------------------------------------------------------


def _pooled(out):
    """transformers >= 5 returns a ModelOutput from get_*_features (the
    projected embedding in .pooler_output); older versions a tensor."""
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def hf_vision_outputs(model, pixels, interpolate=False):
    """Library forward of transformers.CLIPModel's vision side."""
    vo = model.vision_model(pixel_values=pixels, output_hidden_states=True, interpolate_pos_encoding=interpolate)
    lhs = vo.last_hidden_state
    return {
        "hidden_states": list(vo.hidden_states),
        "last_hidden_state": lhs,
        "image_embeds": _pooled(model.get_image_features(pixel_values=pixels, interpolate_pos_encoding=interpolate)),
        "patch_tokens": model.visual_projection(model.vision_model.post_layernorm(lhs[:, 1:])),
    }


def hf_text_embeds(model, input_ids, attention_mask=None):
    return _pooled(model.get_text_features(input_ids=input_ids, attention_mask=attention_mask))


def open_clip_vision_outputs(model, pixels):
    """Library forward of open_clip.CLIP's visual tower, block by block
    (using the library's own modules) to expose hidden states."""
    v = model.visual
    x = v._embeds(pixels)  # conv1 + class + pos + ln_pre, [B, L, D]
    tr = v.transformer
    batch_first = getattr(tr, "batch_first", True)
    hs = [x]
    for r in tr.resblocks:
        if batch_first:
            x = r(x)
        else:
            x = r(x.transpose(0, 1)).transpose(0, 1)
        hs.append(x)
    return {
        "hidden_states": hs,
        "last_hidden_state": x,
        "image_embeds": model.encode_image(pixels, normalize=False),
        "patch_tokens": v.ln_post(x[:, 1:]) @ v.proj,
    }


def open_clip_window_outputs(model, pixels, windows):
    """anomalib-style WinCLIP windows through open_clip's own modules."""
    v = model.visual
    x = v.conv1(pixels)
    x = x.reshape(x.shape[0], x.shape[1], -1).permute(0, 2, 1)
    cls = v.class_embedding.reshape(1, 1, -1).expand(x.shape[0], 1, -1)
    x = torch.cat([cls, x], 1) + v.positional_embedding
    outs = []
    for win in windows:
        idx = torch.tensor([0] + [p + 1 for p in win], dtype=torch.long)
        t = v.ln_pre(x[:, idx])
        t = v.transformer(t) if getattr(v.transformer, "batch_first", True) else \
            v.transformer(t.transpose(0, 1)).transpose(0, 1)
        outs.append(v.ln_post(t[:, 0]) @ v.proj)
    return torch.stack(outs, 1)


def hf_window_outputs(model, pixels, windows):
    """WinCLIP windows through transformers' own modules."""
    vm = model.vision_model
    x = vm.embeddings(pixels)  # before pre_layrnorm
    outs = []
    for win in windows:
        idx = torch.tensor([0] + [p + 1 for p in win], dtype=torch.long)
        t = vm.encoder(inputs_embeds=vm.pre_layrnorm(x[:, idx])).last_hidden_state
        outs.append(model.visual_projection(vm.post_layernorm(t[:, 0])))
    return torch.stack(outs, 1)


# --------------------------------------------------------------------------
# Comparison helpers
# --------------------------------------------------------------------------


def max_abs(a, b) -> float:
    return (a.double() - b.double()).abs().max().item()


def min_row_cos(a, b) -> float:
    """Min cosine similarity over rows (last dim = feature dim)."""
    a = a.double().reshape(-1, a.shape[-1])
    b = b.double().reshape(-1, b.shape[-1])
    return F.cosine_similarity(a, b, dim=-1).min().item()


def assert_close(name, a, b, tol=1e-5):
    assert a.shape == b.shape, f"{name}: shape {tuple(a.shape)} vs {tuple(b.shape)}"
    d = max_abs(a, b)
    print(f"  check {name:<28s} max|d| = {d:.2e}")
    assert d <= tol, f"{name}: max|d| {d} > {tol}"
