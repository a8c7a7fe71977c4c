#!/usr/bin/env python3
"""Recomputes the pixel AUROC / AP of an `anoscope eval` output folder with scikit-learn.

    python tests/reference/check_eval_pixels.py OUT DATASET_CATEGORY [--category NAME]

OUT is the folder `anoscope eval --out OUT` wrote, DATASET_CATEGORY the category folder
it evaluated (`ROOT/<category>`, with ground_truth/).  For every row of OUT/scores.csv
of that category (in that order, as the Rust side pushes them) the script reads the map
OUT/maps/<category>/<defect>/<stem>.map.safetensors, and the mask with Pillow:
`Image.open(p).convert("L").resize((W, H), Image.NEAREST)`, anomalous where > 127
(all-normal for good images).  It prints scikit-learn's `roc_auc_score` and
`average_precision_score` on all pixels next to `pixel_auroc` / `pixel_ap` from
OUT/metrics.json, and their differences.  Needs Pillow, numpy and scikit-learn.
"""

from __future__ import annotations

import argparse
import csv
import json
import struct
from pathlib import Path

import numpy as np
from PIL import Image
from sklearn.metrics import average_precision_score, roc_auc_score


def read_map(path: Path) -> np.ndarray:
    """`anomaly_map` [H, W] f32 of a safetensors file (parsed directly: 8-byte header length,
    JSON header, data)."""
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    meta = json.loads(raw[8 : 8 + n])["anomaly_map"]
    assert meta["dtype"] == "F32", meta
    start, end = meta["data_offsets"]
    h, w = meta["shape"]
    return np.frombuffer(raw[8 + n + start : 8 + n + end], dtype="<f4").reshape(h, w)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("out", type=Path)
    p.add_argument("category_dir", type=Path)
    p.add_argument("--category", help="category name in OUT (default: the folder's name)")
    a = p.parse_args()
    cat = a.category or a.category_dir.resolve().name
    scores, labels = [], []
    with open(a.out / "scores.csv", newline="") as f:
        for row in csv.DictReader(f):
            if row["category"] != cat:
                continue
            m = read_map(a.out / "maps" / cat / row["defect"] / f"{row['stem']}.map.safetensors")
            h, w = m.shape
            if row["label"] == "1":
                mask_path = a.category_dir / "ground_truth" / row["defect"] / f"{row['stem']}_mask.png"
                mask = np.asarray(Image.open(mask_path).convert("L").resize((w, h), Image.NEAREST)) > 127
            else:
                mask = np.zeros((h, w), dtype=bool)
            scores.append(m.astype(np.float64).ravel())
            labels.append(mask.ravel())
    s, y = np.concatenate(scores), np.concatenate(labels)
    ours = json.loads((a.out / "metrics.json").read_text())[cat]
    print(f"{cat}: {len(s)} pixels, {int(y.sum())} anomalous")
    for name, ref in [("pixel_auroc", roc_auc_score(y, s)), ("pixel_ap", average_precision_score(y, s))]:
        v = ours[name]
        print(f"{name}: scikit-learn {ref!r}  anoscope {v!r}  diff {v - ref:+.3e}")


if __name__ == "__main__":
    main()
