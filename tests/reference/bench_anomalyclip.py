#!/usr/bin/env python3
"""Time the official AnomalyCLIP inference per image on this machine (CPU, float32), for the
ratio against `anoscope bench --mode anomalyclip --arch vit-l-14-336`.

    /work/venv-ref/bin/python tests/reference/bench_anomalyclip.py --anomalyclip /work/ext/AnomalyCLIP \
        [--size 518] [--runs 3] [--threads N]

The official model class is built at full size (ViT-L/14@336: 24 blocks of width 1024, text
tower of width 768) with random values (speed does not depend on them), `DAPM_replace(20)`,
and what `test.py` runs per image is timed: `encode_image(image, [24], DPAM_layer=20)`, the
global score, the per-patch similarity, the bilinear upsampling to the input size and
`scipy.ndimage.gaussian_filter(sigma=4)`. The text features (computed once per run in
`test.py`) are not timed. Prints the median, min and max in ms per image as one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--anomalyclip", required=True, help="root of an extracted zqhang/AnomalyCLIP")
    ap.add_argument("--size", type=int, default=518)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=None)
    args = ap.parse_args()
    sys.path.insert(0, str(Path(args.anomalyclip).resolve()))
    os.chdir(args.anomalyclip)
    import torch
    from scipy.ndimage import gaussian_filter
    import AnomalyCLIP_lib
    from AnomalyCLIP_lib.AnomalyCLIP import AnomalyCLIP

    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    design = {"Prompt_length": 12, "learnabel_text_embedding_depth": 9, "learnabel_text_embedding_length": 4}
    model = AnomalyCLIP(768, 336, 24, 1024, 14, 77, 49408, 768, 12, 12, design_details=design).float().eval()
    model.visual.DAPM_replace(DPAM_layer=20)
    text_features = torch.randn(1, 2, 768)
    text_features = text_features / text_features.norm(dim=-1, keepdim=True)
    image = torch.randn(1, 3, args.size, args.size)

    def once() -> None:
        with torch.no_grad():
            image_features, patch_features = model.encode_image(image, [24], DPAM_layer=20)
            image_features = image_features / image_features.norm(dim=-1, keepdim=True)
            text_probs = ((image_features @ text_features.permute(0, 2, 1)) / 0.07).softmax(-1)[:, 0, 1]
            maps = []
            for patch_feature in patch_features:
                patch_feature = patch_feature / patch_feature.norm(dim=-1, keepdim=True)
                similarity, _ = AnomalyCLIP_lib.compute_similarity(patch_feature, text_features[0])
                sm = AnomalyCLIP_lib.get_similarity_map(similarity[:, 1:, :], args.size)
                maps.append((sm[..., 1] + 1 - sm[..., 0]) / 2.0)
            anomaly_map = torch.stack(maps).sum(dim=0)
            anomaly_map = torch.stack([torch.from_numpy(gaussian_filter(i, sigma=4)) for i in anomaly_map])
            float(text_probs[0]), float(anomaly_map.max())

    once()  # warm-up (also resizes the position embeddings in place, as test.py's first image does)
    times = []
    for _ in range(args.runs):
        t0 = time.perf_counter()
        once()
        times.append((time.perf_counter() - t0) * 1e3)
    times.sort()
    print(json.dumps({"impl": "official AnomalyCLIP (torch CPU f32)", "size": args.size,
                      "threads": torch.get_num_threads(), "runs": args.runs, "ms": times[len(times) // 2],
                      "min_ms": times[0], "max_ms": times[-1], "torch": torch.__version__}))


if __name__ == "__main__":
    main()
