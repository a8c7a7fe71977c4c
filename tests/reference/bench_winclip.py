#!/usr/bin/env python3
"""CPU speed of WinCLIP zero-shot detection: anomalib's WinClipModel vs anoscope.

Everything is full-size ViT-B-16-plus-240 (open_clip's config, the WinCLIP
backbone) with random weights (speed does not depend on the weight values),
CPU, float32, batch 1, 240 px.  Nothing is downloaded: anomalib's call to
`open_clip.create_model_and_transforms("ViT-B-16-plus-240",
pretrained="laion400m_e31")` is redirected to the same call with
`pretrained=None` (the monkeypatch of make_detection_fixtures.py).

Measurements ("items"):

  anomalib-winclip  `WinClipModel(class_name="bottle", apply_transform=False)`,
                    then `model(x)`, x = [1,3,240,240] uniform noise normalised
                    with the CLIP mean/std.  1 warm-up call, median of --runs
                    timed calls (ms per image).
  anomalib-text     `model.setup("bottle")`, i.e. `_collect_text_embeddings`:
                    open_clip tokenize + encode_text of the 147 + 84 = 231
                    prompts at the full 77-token context, then the two means.
                    No extra warm-up (the constructor already ran one setup,
                    timed separately as `anomalib_construct_ms`); median of
                    --text-runs timed calls (default 1: ~25 s each on 2 cores).
  openclip-encode   one plain open_clip `model.encode_image(x)` at 240 px
                    (output_tokens off), same weights: the baseline for the
                    "fast mode <= 1.2x one encoder pass" target.  2 warm-up
                    calls, median of --runs.
  ours-winclip, ours-fast, ours-encode, ours-text   (only with --ours PATH)
  ours-winclip-q8   ours-winclip with `--q8` (the image tower's block linear layers in
                    int8; anomalib stays f32)
                    `PATH bench --arch vit-b-16-plus-240 --mode M --threads T
                    --runs N --json` as a subprocess (N = --runs, or
                    --text-runs for mode text), with OMP/MKL/OPENBLAS/RAYON
                    _NUM_THREADS=T in its environment.  The last JSON line of
                    stdout, {"arch","mode","threads","runs","ms",...}, is
                    parsed; "ms" is its median per image (mode text: per class
                    setup of 231 prompts).  The binary does its own warm-up.

For each round, for each thread count, every item runs one timed block; the
item order is rotated from round to round so machine noise hits all alike.
The reported figure is the median over --rounds rounds.  A failing item is
reported, skipped for the rest of that thread count, and makes the script exit
with status 1 at the end; the other items go on.

torch: `torch.set_num_threads(T)` for each T, `torch.set_num_interop_threads(1)`.

Work per image (matmul FLOPs: linear layers, patch-embedding convolution and
the two attention products; layer norms, softmax, GELU not counted):
  one full 240-px pass (226 tokens, width 896, 12 blocks)     ~ 54.8 GFLOP
  WinCLIP zero-shot = 1 full pass + 196 windows of 2x2 (5 tokens) + 169 windows
  of 3x3 (10 tokens), each through all 12 blocks              ~ 673 GFLOP
  text setup = 231 prompts x 77 tokens (width 640, 12 blocks)  ~ 2.1 TFLOP
The script derives these from the instantiated model (layer shapes, window
masks, prompt count) and, unless --no-flop-count, also counts them with
torch.utils.flop_counter.FlopCounterMode on one real call (one extra WinCLIP
forward, ~25 s on 2 cores).  GFLOP/s for WinCLIP uses the nominal 673 GFLOP
(--winclip-gflop); for encode and text it uses the derived figures (the text
figure is the 77-token work open_clip does; an implementation that stops at
the end-of-text token does less, so its "GFLOP/s" there is an effective rate).

Usage (from the repository root; needs open_clip_torch < 2.26 like the
fixtures, see DETECTION.md):

  /work/venv-anomalib/bin/python tests/reference/bench_winclip.py \
      [--ours target/release/anoscope] [--threads 2] [--runs 3] \
      [--text-runs 1] [--rounds 1] [--json bench_winclip.json] \
      [--items anomalib-winclip,anomalib-text,openclip-encode,ours-winclip,...] \
      [--no-flop-count]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
import warnings

warnings.filterwarnings("ignore", category=FutureWarning)

ARCH = "ViT-B-16-plus-240"
OURS_ARCH = "vit-b-16-plus-240"
CLASS_NAME = "bottle"
IMAGE = 240
WINCLIP_GFLOP = 673.0  # nominal, per image: 1 full pass + 365 window passes
ENCODE_GFLOP = 54.76  # one 240-px pass; used only when the model is not built
TEXT_GFLOP = 2140.5  # 231 prompts x 77 tokens; used only when the model is not built
N_PROMPTS = 231
WARMUP_WINCLIP = 1
WARMUP_ENCODE = 2
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ANOMALIB_ITEMS = ("anomalib-winclip", "anomalib-text", "openclip-encode")
OURS_MODES = ("winclip", "fast", "encode", "text")
OURS_ITEMS = tuple("ours-" + m for m in OURS_MODES) + ("ours-winclip-q8",)
ALL_ITEMS = ANOMALIB_ITEMS + OURS_ITEMS


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="2", help="comma-separated thread counts (default 2)")
    p.add_argument("--runs", type=int, default=3,
                   help="timed runs per block for winclip/fast/encode (default 3)")
    p.add_argument("--text-runs", type=int, default=1,
                   help="timed runs per block for the 231-prompt text setup (default 1)")
    p.add_argument("--rounds", type=int, default=1,
                   help="interleaved rounds; the median over rounds is reported (default 1)")
    p.add_argument("--ours", metavar="PATH", help="anoscope binary (enables the ours-* items)")
    p.add_argument("--ours-timeout", type=float, default=1800.0,
                   help="seconds before an ours subprocess is abandoned (default 1800)")
    p.add_argument("--items", default=",".join(ALL_ITEMS),
                   help="subset of items to run (default: all; ours-* only with --ours)")
    p.add_argument("--json", metavar="OUT", help="write all results as JSON to OUT")
    p.add_argument("--no-flop-count", action="store_true",
                   help="skip the FlopCounterMode check (saves one WinCLIP forward)")
    p.add_argument("--winclip-gflop", type=float, default=WINCLIP_GFLOP,
                   help="GFLOP per image used for WinCLIP GFLOP/s (default %g)" % WINCLIP_GFLOP)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    try:
        a.threads = [int(t) for t in a.threads.split(",") if t.strip()]
    except ValueError:
        p.error("--threads needs comma-separated integers")
    if not a.threads or min(a.threads) < 1:
        p.error("--threads needs positive integers")
    if a.runs < 1 or a.text_runs < 1 or a.rounds < 1:
        p.error("--runs, --text-runs and --rounds must be >= 1")
    items = [s.strip() for s in a.items.split(",") if s.strip()]
    bad = set(items) - set(ALL_ITEMS)
    if bad:
        p.error("unknown items: %s (known: %s)" % (", ".join(sorted(bad)), ", ".join(ALL_ITEMS)))
    if not a.ours:
        items = [i for i in items if not i.startswith("ours-")]
    a.items = [i for i in ALL_ITEMS if i in items]
    if not a.items:
        p.error("no items to run")
    return a


# --------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------


def timed_block(fn, warmup: int, runs: int) -> tuple[float, list[float]]:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times), times


def thread_env(threads: int) -> dict:
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "RAYON_NUM_THREADS"):
        env[k] = str(threads)
    return env


def loadavg():
    try:
        return list(os.getloadavg())
    except OSError:
        return None


# --------------------------------------------------------------------------
# anomalib / open_clip side
# --------------------------------------------------------------------------


class Anomalib:
    """anomalib's zero-shot WinClipModel around a random full-size ViT-B-16-plus-240."""

    def __init__(self, seed: int):
        import torch
        import open_clip
        from anomalib.models.image.winclip import torch_model as winclip_tm
        from anomalib.models.image.winclip.prompting import create_prompt_ensemble

        self.torch = torch
        self.open_clip = open_clip
        assert winclip_tm.open_clip is open_clip
        assert winclip_tm.BACKBONE == ARCH, winclip_tm.BACKBONE
        orig = open_clip.create_model_and_transforms

        def fake(model_name, pretrained=None, **kw):
            assert model_name == ARCH, model_name
            assert pretrained == winclip_tm.PRETRAINED and not kw, (pretrained, kw)
            return orig(model_name, pretrained=None)  # random weights, no download

        normal, anomalous = create_prompt_ensemble(CLASS_NAME)
        self.n_prompts = (len(normal), len(anomalous))
        assert sum(self.n_prompts) == N_PROMPTS, self.n_prompts

        torch.manual_seed(seed)
        open_clip.create_model_and_transforms = fake
        try:
            t0 = time.perf_counter()
            self.model = winclip_tm.WinClipModel(class_name=CLASS_NAME, apply_transform=False).eval()
            self.construct_ms = (time.perf_counter() - t0) * 1e3
        finally:
            open_clip.create_model_and_transforms = orig
        assert self.model.k_shot == 0
        assert tuple(self.model.grid_size) == (IMAGE // 16, IMAGE // 16), self.model.grid_size
        g = torch.Generator().manual_seed(seed + 1)
        x = torch.rand(1, 3, IMAGE, IMAGE, generator=g)
        mean = torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        self.x = (x - mean) / std

    # --- the three measured calls
    def winclip(self):
        out = self.model(self.x)
        return out

    def text(self):
        self.model.setup(CLASS_NAME)

    @contextlib.contextmanager
    def plain_visual(self):
        v = self.model.clip.visual
        old = v.output_tokens
        v.output_tokens = False
        try:
            yield
        finally:
            v.output_tokens = old

    def encode(self):
        with self.torch.no_grad():
            return self.model.clip.encode_image(self.x)

    def measure(self, item: str, threads: int, runs: int, text_runs: int) -> dict:
        self.torch.set_num_threads(threads)
        if item == "anomalib-winclip":
            ms, times = timed_block(self.winclip, WARMUP_WINCLIP, runs)
        elif item == "anomalib-text":
            ms, times = timed_block(self.text, 0, text_runs)
        elif item == "openclip-encode":
            with self.plain_visual():
                ms, times = timed_block(self.encode, WARMUP_ENCODE, runs)
        else:
            raise ValueError(item)
        return {"ms": ms, "times_ms": times}

    # --- work, derived from the model
    def analytic_flops(self) -> dict:
        """Matmul FLOPs (2 per multiply-add) from the instantiated layer shapes."""
        v = self.model.clip.visual
        blocks = list(v.transformer.resblocks)

        def tower(blocks, n_tok: int, n_seq: int) -> int:
            f = 0
            for b in blocks:
                d = b.attn.in_proj_weight.shape[1]
                f += 2 * n_tok * b.attn.in_proj_weight.numel()          # q, k, v
                f += 2 * n_tok * b.attn.out_proj.weight.numel()         # attention output
                f += 2 * n_tok * b.mlp.c_fc.weight.numel()              # MLP up
                f += 2 * n_tok * b.mlp.c_proj.weight.numel()            # MLP down
                f += 2 * 2 * n_seq * (n_tok // n_seq) ** 2 * d          # q kᵀ and a v
            return f

        width = v.conv1.weight.shape[0]
        gh, gw = v.grid_size
        n_patch = gh * gw
        patch_embed = 2 * n_patch * v.conv1.weight.numel()
        proj = v.proj.numel() if v.proj is not None else 0
        full = patch_embed + tower(blocks, n_patch + 1, 1) + 2 * proj
        windows = 0
        scales = []
        for masks in self.model.masks:
            k2, n_win = masks.shape
            scales.append({"window_patches": int(k2), "windows": int(n_win)})
            windows += tower(blocks, n_win * (k2 + 1), n_win) + 2 * n_win * proj
        # text: every prompt runs the whole 77-token context (open_clip causal mask)
        t = self.model.clip
        ctx = t.context_length if hasattr(t, "context_length") else 77
        tblocks = list(t.transformer.resblocks)
        text_per_prompt = tower(tblocks, ctx, 1) + 2 * t.text_projection.numel()
        return {
            "vision_width": int(width),
            "vision_layers": len(blocks),
            "grid": [int(gh), int(gw)],
            "window_scales": scales,
            "n_windows": sum(s["windows"] for s in scales),
            "encode_gflop": full / 1e9,
            "windows_gflop": windows / 1e9,
            "winclip_gflop": (full + windows) / 1e9,
            "text_context": int(ctx),
            "text_width": int(tblocks[0].attn.in_proj_weight.shape[1]),
            "text_layers": len(tblocks),
            "text_gflop_per_prompt": text_per_prompt / 1e9,
            "n_prompts": N_PROMPTS,
            "text_gflop": N_PROMPTS * text_per_prompt / 1e9,
        }

    def counted_flops(self) -> dict:
        """torch.utils.flop_counter on one real WinCLIP forward, one plain
        encode_image, and encode_text of one tokenised prompt (x 231)."""
        from torch.utils.flop_counter import FlopCounterMode
        from open_clip.tokenizer import tokenize

        def count(fn):
            fc = FlopCounterMode(display=False)
            with self.torch.no_grad(), fc:
                fn()
            return fc.get_total_flops() / 1e9

        winclip = count(self.winclip)
        with self.plain_visual():
            encode = count(self.encode)
        tok = tokenize(["a photo of a flawless bottle."])
        text1 = count(lambda: self.model.clip.encode_text(tok))
        return {"winclip_gflop": winclip, "encode_gflop": encode,
                "text_gflop_per_prompt": text1, "text_gflop": N_PROMPTS * text1}


# --------------------------------------------------------------------------
# anoscope side
# --------------------------------------------------------------------------


class Ours:
    def __init__(self, binary: str, timeout: float):
        self.binary = binary
        self.timeout = timeout

    def measure(self, item: str, threads: int, runs: int, text_runs: int) -> dict:
        mode = item[len("ours-"):]
        q8 = mode.endswith("-q8")
        mode = mode.removesuffix("-q8")
        n = text_runs if mode == "text" else runs
        cmd = [self.binary, "bench", "--arch", OURS_ARCH, "--mode", mode,
               "--threads", str(threads), "--runs", str(n), "--json"] + (["--q8"] if q8 else [])
        try:
            proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True,
                                  text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise RuntimeError("%s: timed out after %g s" % (" ".join(cmd), self.timeout))
        if proc.returncode != 0:
            msg = " | ".join(l.strip() for l in (proc.stderr.strip() or proc.stdout.strip()).splitlines()
                             if l.strip())
            raise RuntimeError("%s exited %d: %s" % (" ".join(cmd), proc.returncode, msg[-1500:]))
        rec = None
        for line in reversed(proc.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError:
                    pass
                break  # the last JSON-looking line is the one
        if not isinstance(rec, dict):
            raise RuntimeError("no JSON object on the last JSON line of %s stdout:\n%s"
                               % (" ".join(cmd), proc.stdout[-1500:]))
        if "ms" not in rec:
            raise RuntimeError("JSON from %s lacks \"ms\": %r" % (" ".join(cmd), rec))
        for key, want in (("mode", mode), ("threads", threads), ("arch", OURS_ARCH), ("runs", n)):
            if key in rec and str(rec[key]) != str(want):
                print("warning: ours reports %s=%r for %s %r" % (key, rec[key], key, want),
                      file=sys.stderr)
        return {"ms": float(rec["ms"]), "reported": rec}


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def fmt_ms(v):
    return "%.1f" % v if v < 1e5 else "%.0f" % v


def main(argv=None) -> int:
    a = parse_args(argv)

    import torch

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    torch.set_num_threads(a.threads[0])

    meta = {"loadavg_start": loadavg(), "cpu_count": os.cpu_count()}
    failures = []
    runners = {}
    flops = {}
    need_anomalib = any(i in ANOMALIB_ITEMS for i in a.items)
    an = None
    if need_anomalib or not a.no_flop_count:
        print("building anomalib WinClipModel (%s, random weights) ..." % ARCH, file=sys.stderr)
        try:
            an = Anomalib(a.seed)
        except Exception as e:  # noqa: BLE001
            failures.append("anomalib setup: %r" % e)
            print("anomalib setup FAILED: %r" % e, file=sys.stderr)
    if an is not None:
        meta["anomalib_construct_ms"] = an.construct_ms
        meta["anomalib_construct_threads"] = a.threads[0]
        meta["prompts"] = list(an.n_prompts)
        flops["analytic"] = an.analytic_flops()
        fa = flops["analytic"]
        print("work (analytic): encode %.2f GFLOP, WinCLIP %.1f GFLOP (%d windows, %s), "
              "text %.1f GFLOP (%d x %.2f)" % (
                  fa["encode_gflop"], fa["winclip_gflop"], fa["n_windows"],
                  ", ".join("%dx%s" % (s["windows"], s["window_patches"]) for s in fa["window_scales"]),
                  fa["text_gflop"], N_PROMPTS, fa["text_gflop_per_prompt"]), file=sys.stderr)
        if not a.no_flop_count:
            print("counting FLOPs (one WinCLIP forward under FlopCounterMode) ...", file=sys.stderr)
            try:
                flops["counted"] = an.counted_flops()
                fc = flops["counted"]
                print("work (FlopCounterMode): encode %.2f GFLOP, WinCLIP %.1f GFLOP, text %.1f GFLOP"
                      % (fc["encode_gflop"], fc["winclip_gflop"], fc["text_gflop"]), file=sys.stderr)
            except Exception as e:  # noqa: BLE001
                failures.append("flop count: %r" % e)
                print("flop count FAILED: %r" % e, file=sys.stderr)
        for i in ANOMALIB_ITEMS:
            if i in a.items:
                runners[i] = an
    if a.ours:
        ours = Ours(a.ours, a.ours_timeout)
        for i in OURS_ITEMS:
            if i in a.items:
                runners[i] = ours
    items = [i for i in a.items if i in runners]
    for i in a.items:
        if i not in runners:
            failures.append("%s: not run (setup failed)" % i)

    enc_gflop = flops.get("analytic", {}).get("encode_gflop", ENCODE_GFLOP)
    text_gflop = flops.get("analytic", {}).get("text_gflop", TEXT_GFLOP)
    work = {"anomalib-winclip": a.winclip_gflop, "ours-winclip": a.winclip_gflop,
            "ours-winclip-q8": a.winclip_gflop,
            "openclip-encode": enc_gflop, "ours-encode": enc_gflop,
            "anomalib-text": text_gflop, "ours-text": text_gflop}

    per_round = {i: {t: [] for t in a.threads} for i in items}
    detail = {i: {t: [] for t in a.threads} for i in items}
    errors = {i: {} for i in items}
    for r in range(a.rounds):
        k = r % len(items) if items else 0
        order = items[k:] + items[:k]
        for t in a.threads:
            for i in order:
                if t in errors[i]:
                    continue
                try:
                    res = runners[i].measure(i, t, a.runs, a.text_runs)
                except Exception as e:  # noqa: BLE001  keep the others going
                    errors[i][t] = str(e)
                    failures.append("%s T=%d: %s" % (i, t, e))
                    print("round %d  T=%d  %-17s FAILED: %s" % (r + 1, t, i, e), file=sys.stderr)
                    continue
                per_round[i][t].append(res["ms"])
                detail[i][t].append({k2: v for k2, v in res.items() if k2 != "ms"})
                print("round %d  T=%d  %-17s %10s ms" % (r + 1, t, i, fmt_ms(res["ms"])),
                      file=sys.stderr)

    results = {}
    for i in items:
        results[i] = {}
        for t in a.threads:
            vals = per_round[i][t]
            e = {"rounds_ms": vals, "detail": detail[i][t]}
            if vals:
                e["ms"] = statistics.median(vals)
                if work.get(i):
                    e["gflop"] = work[i]
                    e["gflops_per_s"] = work[i] / (e["ms"] / 1e3)
            if t in errors[i]:
                e["error"] = errors[i][t]
            results[i][str(t)] = e

    def ms_of(i, t):
        return results.get(i, {}).get(str(t), {}).get("ms")

    ratio_defs = [
        ("ours/anomalib winclip", "ours-winclip", "anomalib-winclip"),
        ("ours q8/anomalib winclip", "ours-winclip-q8", "anomalib-winclip"),
        ("ours/anomalib text", "ours-text", "anomalib-text"),
        ("ours fast/ours encode", "ours-fast", "ours-encode"),
        ("ours fast/open_clip encode", "ours-fast", "openclip-encode"),
        ("ours encode/open_clip encode", "ours-encode", "openclip-encode"),
        ("anomalib winclip/open_clip encode", "anomalib-winclip", "openclip-encode"),
    ]
    ratios = {}
    for t in a.threads:
        rt = {}
        for name, num, den in ratio_defs:
            n, d = ms_of(num, t), ms_of(den, t)
            if n is not None and d is not None and d > 0:
                rt[name] = n / d
        ratios[str(t)] = rt
    meta["loadavg_end"] = loadavg()

    # ---- table
    print()
    print("%s, random weights, CPU, float32, batch 1, %d px; median of %d timed runs "
          "(text: %d), median over %d round(s)" % (ARCH, IMAGE, a.runs, a.text_runs, a.rounds))
    if "analytic" in flops:
        fa = flops["analytic"]
        line = ("work/image: WinCLIP nominal %.0f GFLOP, computed %.1f (= full pass %.2f + %d windows %.1f)"
                % (a.winclip_gflop, fa["winclip_gflop"], fa["encode_gflop"], fa["n_windows"],
                   fa["windows_gflop"]))
        if "counted" in flops:
            line += ", FlopCounterMode %.1f" % flops["counted"]["winclip_gflop"]
        print(line)
        line = "           encode %.2f GFLOP; text setup %.0f GFLOP (%d prompts x %d tokens)" % (
            fa["encode_gflop"], fa["text_gflop"], N_PROMPTS, fa["text_context"])
        if "counted" in flops:
            line += "; FlopCounterMode %.2f / %.0f" % (flops["counted"]["encode_gflop"],
                                                     flops["counted"]["text_gflop"])
        print(line)
    if "anomalib_construct_ms" in meta:
        print("anomalib WinClipModel construction (model + first text setup, T=%d): %s ms"
              % (a.threads[0], fmt_ms(meta["anomalib_construct_ms"])))
    print("load average start %s, end %s" % (meta["loadavg_start"], meta["loadavg_end"]))
    hdr = "%-7s %-17s %11s %9s   %s" % ("threads", "item", "ms", "GFLOP/s", "per-round ms")
    print(hdr)
    print("-" * len(hdr))
    for t in a.threads:
        for i in items:
            e = results[i][str(t)]
            if "ms" in e:
                gf = "%.1f" % e["gflops_per_s"] if "gflops_per_s" in e else "-"
                print("%-7d %-17s %11s %9s   %s" % (t, i, fmt_ms(e["ms"]), gf,
                                                    " ".join(fmt_ms(v) for v in e["rounds_ms"])))
            else:
                print("%-7d %-17s %11s %9s   %s" % (t, i, "error", "-", e.get("error", "")[:70]))
        for name, v in ratios[str(t)].items():
            print("%-7d %-33s %7.3fx" % (t, name, v))
    print()
    if failures:
        print("%d failure(s):" % len(failures))
        for f in failures:
            print("  " + f.replace("\n", "\n    "))
        print()

    if a.json:
        import anomalib
        from open_clip.version import __version__ as open_clip_version

        out = {
            "arch": ARCH, "ours_arch": OURS_ARCH, "image_size": IMAGE, "batch": 1,
            "class_name": CLASS_NAME, "n_prompts": N_PROMPTS,
            "threads": a.threads, "runs": a.runs, "text_runs": a.text_runs, "rounds": a.rounds,
            "warmup": {"anomalib-winclip": WARMUP_WINCLIP, "anomalib-text": 0,
                       "openclip-encode": WARMUP_ENCODE, "ours": "binary's own"},
            "items": items,
            "winclip_gflop_nominal": a.winclip_gflop,
            "flops": flops,
            "results": results,
            "ratios": ratios,
            "failures": failures,
            "ours": a.ours,
            "meta": dict(meta,
                         torch_version=torch.__version__,
                         open_clip_version=open_clip_version,
                         anomalib_version=anomalib.__version__,
                         python=platform.python_version(),
                         machine=platform.machine(),
                         platform=platform.platform(),
                         argv=sys.argv[1:] if argv is None else list(argv)),
        }
        with open(a.json, "w") as f:
            json.dump(out, f, indent=2)
            f.write("\n")
        print("wrote %s" % a.json, file=sys.stderr)

    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
