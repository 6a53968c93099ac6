"""Inference speed of an artifact beside PyTorch and the peers: the script form of `modelport bench`.

    python benchmarks/infer.py ARTIFACT [--threads 2] [--repeat 3] [--optimum-python /tmp/optimum-venv/bin/python]
                               [--also MLX_OR_MLC_OR_COREML_ARTIFACT] [--json OUT]

Encoders: ms per call of one text (100 calls, "100 embeddings in N s") and texts/s for 256 mixed-length
validation texts in batches of 32, for PyTorch eager (sentence-transformers), every ONNX variant in
onnxruntime through modelport.runtime, the same in transformers.js (Node), optimum's plain and -O2
exports (own venv), and --also artifacts; the lowest cosine to PyTorch beside every speed. Decoders:
prefill and decode tokens/s. One implementation: src/modelport/bench.py (docs/runtime.md).
"""

from __future__ import annotations

import argparse
import sys


def main() -> int:
    from modelport import bench
    from modelport.cli import main as cli_main

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    bench.add_arguments(ap)
    ap.parse_args()  # --help and bad options here; the run itself goes through the CLI (one-line errors)
    return cli_main(["bench", *sys.argv[1:]])


if __name__ == "__main__":
    sys.exit(main())
