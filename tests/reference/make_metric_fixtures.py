#!/usr/bin/env python3
"""Reference fixtures for anoscope's anomaly-detection metrics (crate/src/metrics.rs).

Run from the repository root:

    /work/venv-anomalib/bin/python tests/reference/make_metric_fixtures.py

Writes (definitions and versions in tests/reference/METRICS.md):

    tests/fixtures/metrics/masks/*.png        6 real MVTec AD bottle masks, 64x64 nearest (+ NOTICE.md)
    tests/fixtures/metrics/maps.safetensors   synthetic anomaly maps (U16, score = q / 1024) and masks (U8)
    tests/fixtures/metrics/reference.json     worked examples, edge cases and every reference value

References: scikit-learn (AUROC, AP), anomalib (F1Max, AUPRO, AUPIMO).  Next to
anomalib's float32 results the script records float64 transcriptions of the same
algorithms ("mirror"), asserted to agree with anomalib within 1e-6, so the Rust
tests can also be held to a much tighter tolerance.

Deterministic: fixed seeds, CPU, 2 threads; re-runs are byte-identical.
"""

from __future__ import annotations

import json
import math
import os
import platform
import shutil
import warnings
from pathlib import Path

import cv2
import numpy as np
import scipy
import sklearn
import torch
import PIL
from PIL import Image
from safetensors.numpy import save_file
from scipy.ndimage import gaussian_filter
from sklearn.metrics import average_precision_score, roc_auc_score

import anomalib
import torchmetrics
from anomalib.metrics.aupro import _AUPRO
from anomalib.metrics.f1_score import _F1Max
from anomalib.metrics.pimo.functional import aupimo_scores
from anomalib.metrics.pimo.pimo import _AUPIMO

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
OUT = ROOT / "tests" / "fixtures" / "metrics"
MASK_DIR = OUT / "masks"
DATASET = Path("/work/shared/datasets/mvtec_bottle")

SEED = 20250611
SIZE = 64
QUANT = 1024.0  # scores are multiples of 1/1024: exact in f32, and many ties
torch.set_num_threads(2)
warnings.simplefilter("ignore")

# 6 real masks: single regions, several regions, and masks whose region count
# differs between 4- and 8-connectivity (contamination/007: 1 vs 5).
MASKS = [
    "broken_large/000",
    "broken_large/003",
    "broken_small/001",
    "broken_small/004",
    "contamination/007",
    "contamination/014",
]


def f(x) -> float | None:
    """JSON number for a tensor/float; NaN -> None."""
    v = float(x)
    return None if math.isnan(v) else v


def attempt(fn):
    """Run a reference call; {"value": ...} or {"error": "Type: message"}."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            v = fn()
        out = {"value": v}
        if caught:
            out["warning"] = str(caught[0].message).split("\n")[0][:160]
        return out
    except Exception as ex:  # noqa: BLE001 - recorded as reference behaviour
        return {"error": f"{type(ex).__name__}: {str(ex).splitlines()[0][:200]}"}


# ---------------------------------------------------------------- references


def sk_auroc(scores, labels):
    return f(roc_auc_score(np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float32)))


def sk_ap(scores, labels):
    return f(average_precision_score(np.asarray(labels, dtype=np.int64), np.asarray(scores, dtype=np.float32)))


def al_f1max(scores, labels):
    m = _F1Max()
    m.update(torch.as_tensor(np.asarray(scores, dtype=np.float32)), torch.as_tensor(np.asarray(labels, dtype=np.int64)))
    return f(m.compute())


def al_aupro(maps, masks, fpr_limit=0.3):
    m = _AUPRO(fpr_limit=fpr_limit)
    m.update(torch.as_tensor(maps, dtype=torch.float32), torch.as_tensor(masks.astype(np.int64)))
    return f(m.compute())


def al_aupimo(maps, masks, num_thresholds=300_000, fpr_bounds=(1e-5, 1e-4)):
    """Per-image AUPIMO (functional API) and the metric class's mean."""
    t_maps = torch.as_tensor(maps, dtype=torch.float32)
    t_masks = torch.as_tensor(masks.astype(np.int64))
    _, _, _, _, aucs, npts = aupimo_scores(t_maps, t_masks, num_thresholds=num_thresholds, fpr_bounds=fpr_bounds)
    metric = _AUPIMO(num_thresholds=num_thresholds, fpr_bounds=fpr_bounds, return_average=True)
    metric.update(t_maps, t_masks)
    mean = f(metric.compute())
    return {"per_image": [f(a) for a in aucs], "mean": mean, "num_points": int(npts)}


# --------------------------------------------- float64 mirrors of anomalib's code


def mirror_f1max(scores, labels):
    s = np.asarray(scores, dtype=np.float32)
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(-s, kind="stable")
    s, y = s[order], y[order]
    last = np.r_[np.nonzero(s[1:] != s[:-1])[0], len(s) - 1]
    tps = np.cumsum(y)[last].astype(np.float64)
    fps = (last + 1 - tps).astype(np.float64)
    p = tps / (tps + fps)
    r = tps / tps[-1]
    # anomalib adds 1e-10 to the denominator in float32, where it only matters at p = r = 0
    f1 = np.divide(2 * p * r, p + r, out=np.zeros_like(p), where=(p + r) > 0)
    return float(np.max(np.r_[f1, 0.0]))


def mirror_aupro(maps, masks, fpr_limit=0.3, connectivity=8):
    labels = np.zeros(masks.shape, dtype=np.int64)
    nxt = 1
    for i, m in enumerate(masks):
        n, comp = cv2.connectedComponents(m.astype(np.uint8), connectivity=connectivity)
        for lab in range(1, n):
            labels[i][comp == lab] = nxt
            nxt += 1
    lab = labels.reshape(-1)
    s = np.asarray(maps, dtype=np.float32).reshape(-1)
    bg = lab == 0
    nbg, nreg = bg.sum(), nxt - 1
    if nbg == 0 or nreg == 0:
        return None
    sizes = np.bincount(lab, minlength=nxt).astype(np.float64)
    w = np.where(bg, 0.0, 1.0 / sizes[lab])
    order = np.argsort(-s, kind="stable")
    s, bgs, w = s[order], bg[order], w[order]
    last = np.r_[np.nonzero(s[1:] != s[:-1])[0], len(s) - 1]
    fpr = np.r_[0.0, np.cumsum(bgs)[last] / nbg]
    pro = np.r_[0.0, np.cumsum(w)[last] / nreg]
    i = np.nonzero(fpr <= fpr_limit)[0][-1]
    if fpr[i] < fpr_limit and i + 1 < len(fpr):
        p_lim = pro[i] + (pro[i + 1] - pro[i]) * (fpr_limit - fpr[i]) / (fpr[i + 1] - fpr[i])
        fpr, pro = np.r_[fpr[: i + 1], fpr_limit], np.r_[pro[: i + 1], p_lim]
    else:
        fpr, pro = fpr[: i + 1], pro[: i + 1]
    return float(np.sum(np.diff(fpr) * (pro[1:] + pro[:-1]) / 2) / fpr[-1])


def torch_linspace_mirror(a: np.float32, b: np.float32, k: int) -> np.ndarray:
    """torch.linspace(float32) on CPU: step in f32, then fma(step, i, start) (lower half)
    or fma(-step, k-1-i, end) (upper half); emulated with exact float64 products."""
    a, b = np.float32(a), np.float32(b)
    step = np.float32((b - a) / np.float32(k - 1))
    idx = np.arange(k)
    lo = (np.float64(a) + np.float64(step) * idx).astype(np.float32)
    hi = (np.float64(b) - np.float64(step) * (k - 1 - idx)).astype(np.float32)
    return np.where(idx < k // 2, lo, hi)


# ------------------------------------------------------------------ fixtures


def real_masks() -> dict[str, np.ndarray]:
    MASK_DIR.mkdir(parents=True, exist_ok=True)
    out = {}
    for name in MASKS:
        src = DATASET / "ground_truth" / f"{name}_mask.png"
        img = Image.open(src).convert("L").resize((SIZE, SIZE), Image.NEAREST)
        m = np.asarray(img) > 127
        Image.fromarray((m * 255).astype(np.uint8)).save(MASK_DIR / f"bottle_{name.replace('/', '_')}_mask_64.png")
        out[name] = m
    return out


def synthetic_set(masks: dict[str, np.ndarray]):
    """26 normal + 8 anomalous 64x64 maps: smoothed noise + a blurred-mask signal of
    varying strength, quantized to 1/1024 (ties).  The normal maximum is unique, so the
    shared FPR reaches 1/106496 < 1e-5 (AUPIMO's default lower bound)."""
    rng = np.random.default_rng(SEED)
    anomalous = [masks[n] for n in MASKS] + [masks["broken_small/001"].T.copy(), masks["contamination/007"][::-1].copy()]
    amps = [4.0, 3.2, 2.8, 2.5, 2.2, 1.9, 1.5, 0.0]
    n_normal = 26
    maps, gts, kinds = [], [], []
    for i in range(n_normal + len(anomalous)):
        noise = gaussian_filter(rng.normal(size=(SIZE, SIZE)), sigma=1.5) * 5.0
        if i < n_normal:
            m = np.zeros((SIZE, SIZE), dtype=bool)
            sig = 0.0
            kinds.append("normal")
        else:
            j = i - n_normal
            m = anomalous[j]
            sig = amps[j] * gaussian_filter(m.astype(np.float64), sigma=1.0) * 2.0
            kinds.append(f"anomalous amp={amps[j]}")
        score = 8.0 + noise + sig
        q = np.clip(np.rint(score * QUANT), 0, 65535).astype(np.uint16)
        maps.append(q)
        gts.append(m)
    q = np.stack(maps)
    gts = np.stack(gts)
    normal_q = q[:n_normal]
    top = normal_q.max()
    if (normal_q == top).sum() != 1:
        raise SystemExit("normal maximum is tied: change SEED")
    return q, gts, kinds


def hand_examples():
    """Tiny image-level examples, values worked by hand in crate/tests/metrics.rs."""
    return [
        # sklearn's docstring example: AUROC 0.75, AP 0.8333.., F1max 0.8
        {"name": "sklearn_doc", "scores": [0.1, 0.4, 0.35, 0.8], "labels": [0, 0, 1, 1]},
        # ties across classes (worked by hand in the Rust test)
        {"name": "ties", "scores": [0.5, 0.5, 0.5, 0.2, 0.9, 0.2], "labels": [1, 0, 1, 0, 1, 0]},
        # everything tied: AUROC 0.5, AP = prevalence, F1max = 2p/(1+p)
        {"name": "all_tied", "scores": [0.3, 0.3, 0.3, 0.3, 0.3], "labels": [0, 1, 0, 0, 1]},
        # perfect and inverted rankings
        {"name": "perfect", "scores": [0.9, 0.8, 0.1, 0.2], "labels": [1, 1, 0, 0]},
        {"name": "inverted", "scores": [0.1, 0.2, 0.9, 0.8], "labels": [1, 1, 0, 0]},
        # negative scores and -0.0 / +0.0 (one tie group)
        {"name": "signed_zero", "scores": [-0.0, 0.0, -1.5, 2.0, -1.5], "labels": [1, 0, 0, 1, 1]},
    ]


def image_set(rng):
    n = 120
    labels = (rng.random(n) < 0.4).astype(np.int64)
    scores = np.round(rng.normal(size=n) + 1.1 * labels, 1).astype(np.float32)  # rounded: ties
    return scores, labels


def image_refs(scores, labels):
    return {
        "auroc": attempt(lambda: sk_auroc(scores, labels)),
        "ap": attempt(lambda: sk_ap(scores, labels)),
        "f1max": attempt(lambda: al_f1max(scores, labels)),
        "mirror_f1max": mirror_f1max(scores, labels) if 0 < sum(labels) < len(labels) else None,
    }


def pixel_refs(maps, masks, aupimo_kwargs=None):
    s = maps.reshape(-1)
    y = masks.reshape(-1).astype(np.int64)
    aupimo = attempt(lambda: al_aupimo(maps, masks, **(aupimo_kwargs or {})))
    out = {
        "auroc": attempt(lambda: sk_auroc(s, y)),
        "ap": attempt(lambda: sk_ap(s, y)),
        "f1max": attempt(lambda: al_f1max(s, y)),
        "aupro": attempt(lambda: al_aupro(maps, masks)),
        "aupimo": aupimo,
        "mirror_f1max": mirror_f1max(s, y) if 0 < y.sum() < len(y) else None,
        "mirror_aupro": mirror_aupro(maps, masks),
    }
    return out


def check_mirror(name, refs):
    for key in ("f1max", "aupro"):
        if key not in refs:
            continue
        ref, mir = refs[key].get("value"), refs[f"mirror_{key}"]
        if ref is not None and mir is not None and abs(ref - mir) > 1e-6:
            raise SystemExit(f"{name}: mirror {key} {mir} differs from anomalib {ref}")


def main() -> None:
    if OUT.exists():
        shutil.rmtree(OUT)
    OUT.mkdir(parents=True)
    masks = real_masks()
    q, gts, kinds = synthetic_set(masks)
    save_file({"maps": q, "masks": gts.astype(np.uint8)}, str(OUT / "maps.safetensors"))
    os.chmod(OUT / "maps.safetensors", 0o644)
    maps = q.astype(np.float32) / np.float32(QUANT)
    assert np.all(maps * np.float32(QUANT) == q)  # exact

    ref = {
        "generator": "tests/reference/make_metric_fixtures.py",
        "versions": {
            "python": platform.python_version(),
            "anomalib": anomalib.__version__,
            "torch": torch.__version__,
            "torchmetrics": torchmetrics.__version__,
            "scikit-learn": sklearn.__version__,
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "opencv": cv2.__version__,
            "pillow": PIL.__version__,
        },
        "notes": "null = undefined (NaN or an exception in the reference); error strings record what the reference did",
    }

    # worked examples and a larger image-level set with ties
    ex = []
    for e in hand_examples():
        e = dict(e)
        e.update(image_refs(e["scores"], e["labels"]))
        check_mirror(e["name"], e)
        ex.append(e)
    ref["image_examples"] = ex
    rng = np.random.default_rng(SEED + 1)
    sc, lb = image_set(rng)
    img = {"scores": [float(v) for v in sc], "labels": [int(v) for v in lb]}
    img.update(image_refs(sc, lb))
    check_mirror("image_set", img)
    ref["image_set"] = img

    # image-level edge cases: references' behaviour recorded, ours is None
    ref["image_edge"] = [
        {"name": "all_normal", "scores": [0.1, 0.5, 0.3], "labels": [0, 0, 0]},
        {"name": "all_anomalous", "scores": [0.1, 0.5, 0.3], "labels": [1, 1, 1]},
        {"name": "single", "scores": [0.7], "labels": [1]},
    ]
    for e in ref["image_edge"]:
        e.update(image_refs(e["scores"], e["labels"]))

    # pixel level on the synthetic maps
    img_scores = maps.reshape(len(maps), -1).max(axis=1)
    img_labels = gts.reshape(len(gts), -1).any(axis=1).astype(np.int64)
    px = {
        "num_images": int(len(maps)),
        "height": SIZE,
        "width": SIZE,
        "quant": QUANT,
        "kinds": kinds,
        "image_level_max": image_refs(img_scores, img_labels),
        "pixel": pixel_refs(maps, gts),
        "aupro_fpr_limits": {str(lim): attempt(lambda lim=lim: al_aupro(maps, gts, lim)) for lim in (0.05, 0.3, 1.0)},
        "mirror_aupro_fpr_limits": {str(lim): mirror_aupro(maps, gts, lim) for lim in (0.05, 0.3, 1.0)},
        "mirror_aupro_4_connectivity": mirror_aupro(maps, gts, 0.3, connectivity=4),
    }
    check_mirror("synthetic", px["pixel"])
    for lim in ("0.05", "0.3", "1.0"):
        a, b = px["aupro_fpr_limits"][lim]["value"], px["mirror_aupro_fpr_limits"][lim]
        assert abs(a - b) <= 1e-6, (lim, a, b)
    if "error" in px["pixel"]["aupimo"]:
        raise SystemExit(f"AUPIMO failed on the synthetic set: {px['pixel']['aupimo']}")
    # subsets: few normal pixels (anomalib raises: shared FPR never gets to 1e-5) and
    # non-default AUPIMO options on the same subset
    sub = [0, 1, 26, 27, 30]
    px["subset"] = {
        "indices": sub,
        "default": pixel_refs(maps[sub], gts[sub]),
        "options": {
            "num_thresholds": 5000,
            "fpr_bounds": [1e-3, 1e-2],
            "aupimo": attempt(lambda: al_aupimo(maps[sub], gts[sub], 5000, (1e-3, 1e-2))),
        },
    }
    # all-normal and all-anomalous-image pixel sets
    px["all_normal_images"] = pixel_refs(maps[:4], gts[:4])
    px["all_anomalous_images"] = pixel_refs(maps[26:30], gts[26:30])
    ref["synthetic"] = px

    # AUPRO worked examples (2x3 / 4x4 images)
    def aupro_case(name, maps_, masks_, lims):
        m = np.asarray(maps_, dtype=np.float32)
        g = np.asarray(masks_, dtype=bool)
        return {
            "name": name,
            "maps": m.tolist(),
            "masks": g.astype(int).tolist(),
            "aupro": {str(lim): attempt(lambda lim=lim: al_aupro(m, g, lim)) for lim in lims},
            "mirror_aupro": {str(lim): mirror_aupro(m, g, lim) for lim in lims},
            "mirror_aupro_4_connectivity": {str(lim): mirror_aupro(m, g, lim, 4) for lim in lims},
        }

    ref["aupro_examples"] = [
        # one region of 2 pixels, 4 background pixels: worked by hand (0.5 at every limit)
        aupro_case(
            "hand",
            [[[0.9, 0.1, 0.5], [0.2, 0.3, 0.4]]],
            [[[1, 1, 0], [0, 0, 0]]],
            (0.3, 1.0, 0.5),
        ),
        # diagonal chain: 8-connected = 1 region of 3 + 1 single pixel; 4-connected = 4 regions
        aupro_case(
            "diagonal",
            [[[0.9, 0.3, 0.2, 0.1], [0.25, 0.15, 0.35, 0.05], [0.45, 0.5, 0.8, 0.12], [0.7, 0.22, 0.33, 0.6]]],
            [[[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [1, 0, 0, 0]]],
            (0.3, 1.0),
        ),
        # two images; the second has no anomaly; ties between region and background
        aupro_case(
            "two_images_ties",
            [[[0.5, 0.5, 0.2], [0.5, 0.1, 0.1]], [[0.5, 0.3, 0.2], [0.1, 0.6, 0.0]]],
            [[[1, 1, 0], [0, 0, 1]], [[0, 0, 0], [0, 0, 0]]],
            (0.3, 1.0),
        ),
    ]
    for case in ref["aupro_examples"]:
        for lim, r in case["aupro"].items():
            assert abs(r["value"] - case["mirror_aupro"][lim]) <= 1e-6, (case["name"], lim)
    ref["aupro_edge"] = {
        "no_region": attempt(lambda: al_aupro(np.zeros((1, 2, 2), np.float32), np.zeros((1, 2, 2), bool))),
        "no_background": attempt(lambda: al_aupro(np.ones((1, 2, 2), np.float32), np.ones((1, 2, 2), bool))),
    }

    # torch.linspace(float32) samples: our threshold grid must be bit-identical
    lin = []
    normal = maps[:26]
    pairs = [(float(normal.min()), float(normal.max())), (0.0, 1.0), (-3.25, 0.0078125), (0.1, 0.7), (-17.3, 1234.5)]
    srng = np.random.default_rng(SEED + 2)
    for a, b in pairs:
        a32, b32 = np.float32(a), np.float32(b)
        t = torch.linspace(float(a32), float(b32), 300_000, dtype=torch.float32).numpy()
        assert np.array_equal(t, torch_linspace_mirror(a32, b32, 300_000))
        idx = np.unique(np.r_[0, 1, 2, 149_998, 149_999, 150_000, 150_001, 299_998, 299_999, srng.integers(0, 300_000, 400)])
        lin.append(
            {"start": float(a32), "end": float(b32), "steps": 300_000, "index": idx.tolist(), "bits": [int(v) for v in t[idx].view(np.uint32)]}
        )
    ref["linspace_f32"] = lin

    with open(OUT / "reference.json", "w") as fh:
        json.dump(ref, fh, indent=1, allow_nan=False)
        fh.write("\n")
    (MASK_DIR / "NOTICE.md").write_text(NOTICE)

    total = sum(p.stat().st_size for p in OUT.rglob("*") if p.is_file())
    p = px["pixel"]
    print(f"pixel AUROC {p['auroc']['value']:.6f} AP {p['ap']['value']:.6f} F1 {p['f1max']['value']:.6f} "
          f"AUPRO {p['aupro']['value']:.6f} AUPIMO {p['aupimo']['value']['mean']:.6f} "
          f"({p['aupimo']['value']['num_points']} points)")
    print(f"wrote {OUT.relative_to(ROOT)}: {total} bytes")
    assert total <= 1_000_000


NOTICE = """# Masks

The six PNGs here are ground-truth masks of MVTec AD, category `bottle`
(`ground_truth/<defect>/<nnn>_mask.png`), taken from `/work/shared/datasets/mvtec_bottle`
(itself resized from the original 900x900 to 448x448 with nearest neighbour) and
downscaled to 64x64 with Pillow `Image.resize((64, 64), Image.NEAREST)`, re-thresholded
to 0/255 by `tests/reference/make_metric_fixtures.py`.  The same masks (two of them also
transposed / flipped) are stored in `../maps.safetensors`.

They are derivatives of MVTec AD and carry its license:
**CC BY-NC-SA 4.0** (Creative Commons Attribution-NonCommercial-ShareAlike 4.0 International),
Copyright 2019 MVTec Software GmbH. Non-commercial use only; derivatives must carry the same
license. https://creativecommons.org/licenses/by-nc-sa/4.0/

Please cite: Paul Bergmann, Michael Fauser, David Sattlegger, and Carsten Steger,
"A Comprehensive Real-World Dataset for Unsupervised Anomaly Detection",
IEEE Conference on Computer Vision and Pattern Recognition (CVPR), 2019.
"""


if __name__ == "__main__":
    main()
