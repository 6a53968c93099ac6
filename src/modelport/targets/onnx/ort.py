"""What both ONNX families share: the opset, the 4-bit quantizer, onnxruntime session options, saving a
graph (inline or with external weights above protobuf's 2 GB) and the runtime versions.

No toolchain at module level: onnx and onnxruntime are imported inside the functions that use them.
"""

from __future__ import annotations

from pathlib import Path

from ..registry import Converter

OPSET = 18
Q4_BLOCK = 32
# protobuf cannot hold a single file over 2 GB: above this, weights go to <file>_data next to it
EXTERNAL_DATA_BYTES = 1_800_000_000


def needs_external_data(n_bytes: int) -> bool:
    """Whether `n_bytes` of weights must be stored beside the graph (protobuf's 2 GB limit)."""
    return n_bytes > EXTERNAL_DATA_BYTES


def quantize_q4(src: Path, dst: Path, *, quiet: bool = False) -> None:
    """Every MatMul with a constant weight -> MatMulNBits 4-bit, block 32, symmetric (both families'
    settings). `quiet` silences the quantizer's per-node INFO lines (decoders have hundreds)."""
    import logging

    import onnx
    from onnxruntime.quantization.matmul_nbits_quantizer import DefaultWeightOnlyQuantConfig, MatMulNBitsQuantizer

    log = logging.getLogger("onnxruntime.quantization.matmul_nbits_quantizer")
    level = log.level
    if quiet:
        log.setLevel(logging.WARNING)
    try:
        cfg = DefaultWeightOnlyQuantConfig(block_size=Q4_BLOCK, is_symmetric=True)
        q = MatMulNBitsQuantizer(onnx.load(str(src)), block_size=Q4_BLOCK, is_symmetric=True, algo_config=cfg)
        q.process()
        q.model.save_model_to_file(str(dst), use_external_data_format=False)
    finally:
        log.setLevel(level)


def session_options(threads: int = 2):
    """CPU session options the validator uses: `threads` intra-op threads, quiet logs."""
    import onnxruntime as ort

    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    return so


def save_model(model, dst: Path) -> None:
    """onnx.save, with the weights in <file>_data (one file, as transformers.js loads it) above 2 GB."""
    import onnx

    # initializer bytes decide (a >2 GB message cannot be serialized to measure it)
    size = sum(len(i.raw_data) or i.ByteSize() for i in model.graph.initializer)
    if needs_external_data(size):
        onnx.save(model, str(dst), save_as_external_data=True, all_tensors_to_one_file=True,
                  location=dst.name + "_data", size_threshold=1024)
    else:
        onnx.save(model, str(dst))


def drop_dead_nodes(graph) -> None:
    """Remove nodes whose outputs nothing reads, until none is left (a rewrite's orphans)."""
    outputs = {o.name for o in graph.output}
    while True:
        used = {i for n in graph.node for i in n.input} | outputs
        dead = [n for n in graph.node if not any(o in used for o in n.output)]
        if not dead:
            return
        for n in dead:
            graph.node.remove(n)


def runtime_versions() -> dict[str, str]:
    from importlib.metadata import version

    return {"onnxruntime": version("onnxruntime")}


class OnnxConverter(Converter):
    """What both ONNX converters share: the toolchain, the runtime, the weight reader. Not registered
    itself; OnnxEncoder and OnnxDecoder subclass it with their family, variants and convert/open."""

    target = "onnx"
    requires = ("torch", "transformers", "onnx", "onnxruntime", "onnxscript")
    runtime_requires = ("onnxruntime",)

    def weight_tensors(self, artifact: Path, variant: str):
        from .weights import weight_tensors

        return weight_tensors(artifact, self.variants[variant].path)

    def runtime_versions(self) -> dict[str, str]:
        return runtime_versions()
