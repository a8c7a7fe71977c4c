#!/usr/bin/env python3
"""Reference fixtures for the mask resampling of `anoscope eval` (resize_mask_nearest in
crate/src/eval/dataset.rs): which source pixels Pillow's `Image.resize(..., Image.NEAREST)`
picks.

Run from the repository root (needs only Pillow):

    python tests/reference/make_mask_resize_fixtures.py tests/images/bottle_broken_large_003_mask.png

Writes tests/fixtures/mask_resize/ (or --out DIR):

    <stem>_<W>x<H>.png   each MASK argument opened with Pillow, `.convert("L")`, resized to
                         W x H with `Image.NEAREST` (values kept: 0/255 for 0/255 masks)
    reference.json       the Pillow version; per mask its source file, size and sha256 and the
                         outputs written; and index tables: for each (n_in, n_out) in SIZES
                         the source column of every output pixel, read back from resizing a
                         1-row "I" (int32) image holding 0, 1, ..., n_in - 1

The sizes include 448 -> 40, where Pillow's running double-precision sum lands just below
some exact ties (outputs 2, 17, 22, 27, 32, 37 take 27, 195, 251, 307, 363, 419, not
28, 196, ...).  Deterministic: re-runs are byte-identical with the same Pillow and zlib.
"""

from __future__ import annotations

import argparse
import hashlib
import json
from pathlib import Path

import PIL
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "tests" / "fixtures" / "mask_resize"

# Output sizes of every mask: the 448 -> 40, coarser and finer maps (20, 80, the
# 240 input of ViT-B-16-plus-240) and a non-square one (x and y differ).
MASK_SIZES = [(40, 40), (20, 20), (80, 80), (240, 240), (40, 28)]

# Index tables: input sides (MVTec 448 and 900, the tiny fixtures' 64, odd sides of KSDD-like
# masks) x output sides (map sizes, odd sizes, upsampling).
N_IN = [448, 900, 64, 250, 627]
N_OUT = [1, 3, 7, 20, 37, 40, 48, 80, 100, 240]


def source_columns(n_in: int, n_out: int) -> list[int]:
    ramp = Image.new("I", (n_in, 1))
    ramp.putdata(list(range(n_in)))
    out = ramp.resize((n_out, 1), Image.NEAREST)
    return [int(out.getpixel((x, 0))) for x in range(n_out)]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("masks", nargs="+", type=Path, help="mask PNGs (stems must differ)")
    p.add_argument("--out", type=Path, default=OUT)
    a = p.parse_args()
    a.out.mkdir(parents=True, exist_ok=True)
    masks = []
    for path in a.masks:
        src = Image.open(path).convert("L")
        outputs = []
        for w, h in MASK_SIZES:
            name = f"{path.stem}_{w}x{h}.png"
            r = src.resize((w, h), Image.NEAREST)
            r.save(a.out / name, optimize=True)
            outputs.append({"file": name, "width": w, "height": h,
                            "anomalous": sum(r.histogram()[128:])})
        rel = path.resolve().relative_to(ROOT) if path.resolve().is_relative_to(ROOT) else path
        masks.append({
            "source": str(rel),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
            "width": src.width,
            "height": src.height,
            "outputs": outputs,
        })
    tables = [{"n_in": n_in, "n_out": n_out, "src": source_columns(n_in, n_out)}
              for n_in in N_IN for n_out in N_OUT]
    head = json.dumps({"pillow": PIL.__version__, "masks": masks}, indent=1)
    # One line per index table.
    rows = ",\n".join(json.dumps(t, separators=(",", ":")) for t in tables)
    text = head[:-2] + ',\n "indices": [\n' + rows + "\n ]\n}"
    json.loads(text)
    (a.out / "reference.json").write_text(text + "\n")
    total = sum(f.stat().st_size for f in a.out.iterdir())
    print(f"wrote {len(masks)} masks x {len(MASK_SIZES)} sizes and {len(tables)} index tables to {a.out} ({total} bytes)")


if __name__ == "__main__":
    main()
