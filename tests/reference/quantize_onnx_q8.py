#!/usr/bin/env python3
"""Makes the transformers.js-style q8 ONNX of an fp32 image-tower export.

The browser benchmark's q8 peer (tests/bench/browser_bench.mjs --onnx-q8) is what a person who
picks transformers.js gets by default on its wasm device (dtype "q8"). transformers.js makes
that file with its `scripts/quantize.py`, mode q8, which this script follows (its defaults):

  * onnxruntime's ONNXQuantizer in IntegerOps mode, dynamic (static=False): MatMul / Conv / …
    (every op type of onnxruntime's IntegerOpsRegistry) become MatMulInteger / ConvInteger
    with their activations quantized to uint8 at run time (DynamicQuantizeLinear), i32
    accumulation;
  * weights per tensor (per_channel off), full 8-bit range (reduce_range off);
  * weight type uint8 when the graph has a Conv (as the ViT's patch embedding does: onnxruntime-web
    has no ConvInteger for int8 weights), int8 otherwise;
  * extra options EnableSubgraph=True, MatMulConstBOnly=True (only MatMuls with a constant
    weight are quantized; attention's activation × activation products stay fp32).

Usage (the fp32 file from tests/reference/export_onnx.py):
  /work/venv-ref/bin/python tests/reference/quantize_onnx_q8.py --onnx fp32.onnx --out q8.onnx
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def graph_ops(model) -> set[str]:
    """Every op type in the graph and its subgraphs."""
    ops: set[str] = set()

    def walk(graph):
        for node in graph.node:
            ops.add(node.op_type)
            for attr in node.attribute:
                if attr.g is not None and attr.g.node:
                    walk(attr.g)
                for g in attr.graphs:
                    walk(g)

    walk(model.graph)
    return ops


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--onnx", required=True, help="the fp32 .onnx (tests/reference/export_onnx.py)")
    p.add_argument("--out", required=True, help="the q8 .onnx to write")
    a = p.parse_args(argv)
    if not os.path.isfile(a.onnx):
        p.error("%s does not exist" % a.onnx)

    import onnx
    from onnxruntime.quantization import QuantizationMode, QuantType
    from onnxruntime.quantization.onnx_quantizer import ONNXQuantizer
    from onnxruntime.quantization.registry import IntegerOpsRegistry

    t0 = time.perf_counter()
    model = onnx.load(a.onnx)
    ops = graph_ops(model)
    # transformers.js: QUINT8_OPS = ("Conv", "GroupQueryAttention", "MultiHeadAttention").
    weight_type = (
        QuantType.QUInt8
        if ops & {"Conv", "GroupQueryAttention", "MultiHeadAttention"}
        else QuantType.QInt8
    )
    quantizer = ONNXQuantizer(
        model,
        False,  # per_channel
        False,  # reduce_range
        mode=QuantizationMode.IntegerOps,
        static=False,
        weight_qType=weight_type,
        activation_qType=QuantType.QUInt8,
        tensors_range=None,
        nodes_to_quantize=[],
        nodes_to_exclude=[],
        op_types_to_quantize=set(IntegerOpsRegistry.keys()),
        extra_options=dict(EnableSubgraph=True, MatMulConstBOnly=True),
    )
    quantizer.quantize_model()
    tmp = a.out + ".tmp"
    onnx.save_model(quantizer.model.model, tmp)
    os.replace(tmp, a.out)
    q_ops = graph_ops(onnx.load(a.out, load_external_data=False))
    print(
        "wrote %s (%s weights, %.1f MB; %d MatMulInteger, ConvInteger: %s) in %.1f s"
        % (
            a.out,
            weight_type.name,
            os.path.getsize(a.out) / 1e6,
            sum(1 for n in onnx.load(a.out).graph.node if n.op_type == "MatMulInteger"),
            "ConvInteger" in q_ops,
            time.perf_counter() - t0,
        ),
        file=sys.stderr,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
