#!/usr/bin/env python3
"""CPU speed comparison of the ViT-B/16 CLIP image tower against its peers.

Peers (all full-size ViT-B/16, 224 px, batch 1, random weights -- speed does
not depend on the weight values):

  pytorch      transformers `CLIPVisionModelWithProjection`, eval mode,
               `torch.inference_mode()`, `torch.set_num_threads(T)`.
  onnxruntime  the same model exported once to ONNX (legacy exporter,
               opset 17, output `image_embeds`; cached under --cache-dir, never
               in the repo), run by an `InferenceSession` with
               intra_op_num_threads=T, inter_op_num_threads=1, sequential
               execution and all graph optimisations.
  ours         `ANOSCOPE bench --arch vit-b-16 --threads T --runs N --json`
               run as a subprocess (only with --ours PATH); its JSON line
               {"arch","threads","runs","encode_ms","gflops"} is parsed.
  ours-q8      the same with `--q8` (the image tower's block linear layers in
               int8, quantized at load).
  ours-base    another anoscope binary (--ours-base PATH), e.g. the build
               before a change, timed in the same interleaved rounds.
  onnxruntime-q8
               the ONNX export dynamically quantized to int8 the way
               transformers.js makes its default wasm "q8" models
               (scripts/quantize.py: `onnxruntime.quantization` dynamic
               IntegerOps, MatMul and Conv weights uint8 per tensor since the
               graph has a Conv, activations uint8 at run time,
               MatMulConstBOnly); cached next to the fp32 export.

Measurements are interleaved so machine noise hits every peer alike: for each
round, for each thread count, each peer runs one timed block (2 warm-up runs,
then N timed runs, median).  The peer order is rotated from round to round.
The reported figure is the median over the R rounds.

Usage (from the repo root):

  /work/venv-ref/bin/python tests/reference/bench_peers.py \
      [--ours target/release/anoscope] [--threads 1,2] [--runs 5] \
      [--rounds 2] [--json bench.json] [--cache-dir /tmp/anoscope-bench] \
      [--peers pytorch,onnxruntime,ours] [--ours-base OLD_BINARY]

Needs: torch, transformers, numpy, onnx, onnxruntime (and onnxscript for
newer torch versions' exporter imports).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path

GFLOP_PER_IMAGE = 35.1  # ViT-B/16 image tower at 224 px, batch 1
WARMUP = 2
OPSET = 17

MODEL_CFG = dict(
    hidden_size=768,
    intermediate_size=3072,
    num_attention_heads=12,
    num_hidden_layers=12,
    patch_size=16,
    image_size=224,
    projection_dim=512,
    hidden_act="quick_gelu",
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--threads", default="1,2",
                   help="comma-separated thread counts (default 1,2)")
    p.add_argument("--runs", type=int, default=5,
                   help="timed runs per block, after %d warm-up runs (default 5)" % WARMUP)
    p.add_argument("--rounds", type=int, default=2,
                   help="interleaved rounds; the median over rounds is reported (default 2)")
    p.add_argument("--ours", metavar="PATH",
                   help="path to the anoscope binary (enables the 'ours' peer)")
    p.add_argument("--json", metavar="OUT", help="write results as JSON to OUT")
    p.add_argument("--cache-dir", default=os.path.join("/tmp", "anoscope-bench"),
                   help="where the exported .onnx file is cached (default /tmp/anoscope-bench)")
    p.add_argument("--peers", default="pytorch,onnxruntime,ours",
                   help="subset of peers to run (default pytorch,onnxruntime,ours; also "
                        "ours-q8, ours-base (with --ours-base) and onnxruntime-q8; "
                        "'ours*' only with --ours)")
    p.add_argument("--ours-base", metavar="PATH",
                   help="another anoscope binary, the 'ours-base' peer (before/after a change)")
    p.add_argument("--ours-timeout", type=float, default=900.0,
                   help="seconds before an 'ours' subprocess is abandoned (default 900)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    a.threads = [int(t) for t in a.threads.split(",") if t.strip()]
    if not a.threads or min(a.threads) < 1:
        p.error("--threads needs positive integers")
    if a.runs < 1 or a.rounds < 1:
        p.error("--runs and --rounds must be >= 1")
    peers = [s.strip() for s in a.peers.split(",") if s.strip()]
    bad = set(peers) - {"pytorch", "onnxruntime", "onnxruntime-q8", "ours", "ours-q8", "ours-base"}
    if bad:
        p.error("unknown peers: %s" % ", ".join(sorted(bad)))
    for name in ("ours", "ours-q8"):
        if name in peers and not a.ours:
            peers.remove(name)
    if "ours-base" in peers and not a.ours_base:
        p.error("--peers ours-base needs --ours-base PATH")
    if a.ours and "ours" not in peers and "ours" in a.peers.split(","):
        peers.append("ours")
    a.peers = peers
    if not peers:
        p.error("no peers to run")
    return a


# --------------------------------------------------------------------------
# Timing helpers
# --------------------------------------------------------------------------


def timed_block(fn, runs: int) -> float:
    """2 warm-up calls, then `runs` timed calls; median in milliseconds."""
    for _ in range(WARMUP):
        fn()
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def thread_env(threads: int) -> dict:
    """Environment for a subprocess pinned to `threads` worker threads.
    OPENBLAS_CORETYPE and anything else already set is left alone."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
              "RAYON_NUM_THREADS"):
        env[k] = str(threads)
    return env


# --------------------------------------------------------------------------
# Peers
# --------------------------------------------------------------------------


class TorchPeer:
    name = "pytorch"

    def __init__(self, model, pixel_values):
        self.model = model
        self.x = pixel_values

    def measure(self, threads: int, runs: int) -> dict:
        import torch

        torch.set_num_threads(threads)
        os.environ["OMP_NUM_THREADS"] = str(threads)  # informative only
        os.environ["MKL_NUM_THREADS"] = str(threads)
        with torch.inference_mode():
            ms = timed_block(lambda: self.model(pixel_values=self.x).image_embeds, runs)
        return {"encode_ms": ms}


class OrtPeer:
    name = "onnxruntime"

    def __init__(self, onnx_path: Path, pixel_values_np):
        self.path = str(onnx_path)
        self.feed = {"pixel_values": pixel_values_np}
        self.sessions = {}

    def session(self, threads: int):
        import onnxruntime as ort

        if threads not in self.sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
            so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self.sessions[threads] = ort.InferenceSession(
                self.path, sess_options=so, providers=["CPUExecutionProvider"])
        return self.sessions[threads]

    def measure(self, threads: int, runs: int) -> dict:
        sess = self.session(threads)
        ms = timed_block(lambda: sess.run(["image_embeds"], self.feed), runs)
        return {"encode_ms": ms}


class OursPeer:
    def __init__(self, binary: str, timeout: float, name: str = "ours", extra=()):
        self.binary = binary
        self.timeout = timeout
        self.name = name
        self.extra = list(extra)

    def measure(self, threads: int, runs: int) -> dict:
        cmd = [self.binary, "bench", "--arch", "vit-b-16", "--threads", str(threads),
               "--runs", str(runs), "--json"] + self.extra
        proc = subprocess.run(cmd, env=thread_env(threads), capture_output=True,
                              text=True, timeout=self.timeout)
        if proc.returncode != 0:
            raise RuntimeError("%s exited %d: %s" % (
                " ".join(cmd), proc.returncode, proc.stderr.strip()[-2000:]))
        rec = None
        for line in reversed(proc.stdout.splitlines()):
            line = line.strip()
            if line.startswith("{"):
                try:
                    rec = json.loads(line)
                    break
                except json.JSONDecodeError:
                    continue
        if rec is None:  # maybe pretty-printed over several lines
            try:
                rec = json.loads(proc.stdout)
            except json.JSONDecodeError:
                raise RuntimeError("no JSON in output of %s:\n%s" % (
                    " ".join(cmd), proc.stdout[-2000:]))
        if "encode_ms" not in rec:
            raise RuntimeError("JSON from %s lacks encode_ms: %r" % (" ".join(cmd), rec))
        if int(rec.get("threads", threads)) != threads:
            print("warning: ours reports threads=%s for --threads %d"
                  % (rec.get("threads"), threads), file=sys.stderr)
        return {"encode_ms": float(rec["encode_ms"]), "reported": rec}


# --------------------------------------------------------------------------
# Model construction / export
# --------------------------------------------------------------------------


def build_torch_model(seed: int):
    import torch
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    torch.manual_seed(seed)
    cfg = CLIPVisionConfig(**MODEL_CFG)
    model = CLIPVisionModelWithProjection(cfg).eval()
    x = torch.randn(1, 3, MODEL_CFG["image_size"], MODEL_CFG["image_size"])
    return model, x


def export_onnx(model, x, cache_dir: Path) -> Path:
    import torch
    import transformers

    cache_dir.mkdir(parents=True, exist_ok=True)
    tag = "vitb16-224-op%d-torch%s-tf%s" % (
        OPSET, torch.__version__.split("+")[0], transformers.__version__)
    path = cache_dir / ("clip_%s.onnx" % tag)
    if path.exists():
        print("onnx: using cached %s" % path, file=sys.stderr)
        return path

    print("onnx: exporting to %s ..." % path, file=sys.stderr)
    t0 = time.perf_counter()
    write_image_embeds_onnx(model, x, path)
    print("onnx: exported in %.1f s" % (time.perf_counter() - t0), file=sys.stderr)
    return path


def write_image_embeds_onnx(model, x, path) -> None:
    """Exports `pixel_values -> image_embeds` of a CLIPVisionModelWithProjection to `path`
    (legacy exporter, opset OPSET, constant folding; written to a temporary file first)."""
    import torch

    class ImageEmbeds(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            return self.m(pixel_values=pixel_values).image_embeds

    path = Path(path)
    tmp = path.with_suffix(".onnx.tmp")
    with torch.no_grad():
        torch.onnx.export(
            ImageEmbeds(model), (x,), str(tmp),
            input_names=["pixel_values"], output_names=["image_embeds"],
            opset_version=OPSET, do_constant_folding=True, dynamo=False)
    os.replace(tmp, path)


def quantize_q8(fp32_path: Path) -> Path:
    """The transformers.js-style dynamic int8 model of `fp32_path` (cached beside it)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = fp32_path.with_name(fp32_path.stem + "_q8dyn.onnx")
    if out.exists():
        print("onnx q8: using cached %s" % out, file=sys.stderr)
        return out
    tmp = out.with_suffix(".onnx.tmp")
    # transformers.js scripts/quantize.py, mode q8: IntegerOps (dynamic), weights uint8 when the
    # graph has a Conv (this one does: the patch embedding), per tensor, no reduced range,
    # MatMul only with constant B.
    quantize_dynamic(
        str(fp32_path), str(tmp),
        op_types_to_quantize=["MatMul", "Conv"],
        per_channel=False, reduce_range=False,
        weight_type=QuantType.QUInt8,
        extra_options={"EnableSubgraph": True, "MatMulConstBOnly": True})
    os.replace(tmp, out)
    return out


def check_ort_matches(model, x, ort_peer: OrtPeer) -> float:
    """Max abs difference between torch and onnxruntime image_embeds."""
    import numpy as np
    import torch

    with torch.inference_mode():
        ref = model(pixel_values=x).image_embeds.numpy()
    got = ort_peer.session(1).run(["image_embeds"], ort_peer.feed)[0]
    return float(np.max(np.abs(ref - got)))


# --------------------------------------------------------------------------
# Main
# --------------------------------------------------------------------------


def gflops(ms: float) -> float:
    return GFLOP_PER_IMAGE / (ms / 1e3)


def main(argv=None) -> int:
    a = parse_args(argv)

    import torch

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass

    peers = []
    meta = {}
    model = x = None
    if "pytorch" in a.peers or "onnxruntime" in a.peers or "onnxruntime-q8" in a.peers:
        model, x = build_torch_model(a.seed)
    if "pytorch" in a.peers:
        peers.append(TorchPeer(model, x))
    if "onnxruntime" in a.peers:
        import onnxruntime as ort

        onnx_path = export_onnx(model, x, Path(a.cache_dir))
        ortp = OrtPeer(onnx_path, x.numpy())
        diff = check_ort_matches(model, x, ortp)
        print("onnx: max |torch - ort| image_embeds = %.3g" % diff, file=sys.stderr)
        meta["onnx_path"] = str(onnx_path)
        meta["onnx_max_abs_diff"] = diff
        meta["onnxruntime_version"] = ort.__version__
        peers.append(ortp)
    if "onnxruntime-q8" in a.peers:
        import numpy as np

        q8_path = quantize_q8(export_onnx(model, x, Path(a.cache_dir)))
        q8p = OrtPeer(q8_path, x.numpy())
        q8p.name = "onnxruntime-q8"
        with torch.inference_mode():
            ref = model(pixel_values=x).image_embeds.numpy()[0]
        got = q8p.session(1).run(["image_embeds"], q8p.feed)[0][0]
        cosv = float(np.dot(ref, got) / (np.linalg.norm(ref) * np.linalg.norm(got)))
        print("onnx q8: cosine(torch, ort q8) image_embeds = %.6f" % cosv, file=sys.stderr)
        meta["onnx_q8_path"] = str(q8_path)
        meta["onnx_q8_cosine"] = cosv
        peers.append(q8p)
    if "ours" in a.peers:
        peers.append(OursPeer(a.ours, a.ours_timeout))
    if "ours-q8" in a.peers:
        peers.append(OursPeer(a.ours, a.ours_timeout, "ours-q8", ["--q8"]))
    if "ours-base" in a.peers:
        peers.append(OursPeer(a.ours_base, a.ours_timeout, "ours-base"))

    # results[peer][threads] -> list of per-round encode_ms (or error string)
    per_round = {p.name: {t: [] for t in a.threads} for p in peers}
    reported = {p.name: {t: [] for t in a.threads} for p in peers}
    errors = {p.name: {} for p in peers}
    for r in range(a.rounds):
        k = r % len(peers)
        order = peers[k:] + peers[:k]
        for t in a.threads:
            for p in order:
                if t in errors[p.name]:
                    continue
                try:
                    res = p.measure(t, a.runs)
                except Exception as e:  # keep the other peers going
                    errors[p.name][t] = str(e)
                    print("round %d  T=%d  %-16s FAILED: %s" % (r + 1, t, p.name, e),
                          file=sys.stderr)
                    continue
                per_round[p.name][t].append(res["encode_ms"])
                if "reported" in res:
                    reported[p.name][t].append(res["reported"])
                print("round %d  T=%d  %-16s %9.1f ms" % (r + 1, t, p.name, res["encode_ms"]),
                      file=sys.stderr)

    # Aggregate
    results = {}
    for p in peers:
        results[p.name] = {}
        for t in a.threads:
            vals = per_round[p.name][t]
            entry = {"rounds_ms": vals}
            if vals:
                ms = statistics.median(vals)
                entry.update(encode_ms=ms, gflops=gflops(ms))
            if t in errors[p.name]:
                entry["error"] = errors[p.name][t]
            if reported[p.name][t]:
                entry["reported"] = reported[p.name][t]
            results[p.name][str(t)] = entry

    ratios = {}
    for t in a.threads:
        rt = {}
        for mine in ("ours", "ours-q8", "ours-base"):
            o = results.get(mine, {}).get(str(t), {}).get("encode_ms")
            for other in ("pytorch", "onnxruntime", "onnxruntime-q8", "ours-base"):
                v = results.get(other, {}).get(str(t), {}).get("encode_ms")
                if mine != other and o is not None and v is not None:
                    rt["%s/%s" % (mine, other)] = o / v
        ratios[str(t)] = rt

    # Table
    print()
    print("ViT-B/16 image tower, 224 px, batch 1, CPU (%.1f GFLOP/image); "
          "median of %d timed runs, median over %d rounds"
          % (GFLOP_PER_IMAGE, a.runs, a.rounds))
    hdr = "%-8s %-16s %10s %9s   %s" % ("threads", "peer", "encode_ms", "GFLOP/s", "per-round ms")
    print(hdr)
    print("-" * len(hdr))
    for t in a.threads:
        for p in peers:
            e = results[p.name][str(t)]
            if "encode_ms" in e:
                print("%-8d %-16s %10.1f %9.1f   %s" % (
                    t, p.name, e["encode_ms"], e["gflops"],
                    " ".join("%.1f" % v for v in e["rounds_ms"])))
            else:
                print("%-8d %-16s %10s %9s   %s" % (t, p.name, "error", "-",
                                                    e.get("error", "")[:60]))
        for name, v in ratios.get(str(t), {}).items():
            print("%-8d %-16s %10.2fx" % (t, name, v))
    print()

    if a.json:
        out = {
            "model": dict(MODEL_CFG, name="ViT-B/16", batch=1),
            "gflop_per_image": GFLOP_PER_IMAGE,
            "threads": a.threads,
            "runs": a.runs,
            "warmup": WARMUP,
            "rounds": a.rounds,
            "results": results,
            "ratios": ratios,
            "meta": dict(meta,
                         torch_version=torch.__version__,
                         python=platform.python_version(),
                         machine=platform.machine(),
                         cpu_count=os.cpu_count(),
                         ours=a.ours),
        }
        Path(a.json).write_text(json.dumps(out, indent=2) + "\n")
        print("wrote %s" % a.json, file=sys.stderr)
    return 1 if any(errors[p.name] for p in peers) else 0


if __name__ == "__main__":
    sys.exit(main())
