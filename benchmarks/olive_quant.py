"""Olive's (olive-ai 0.13) weight-only quantization passes on an fp32 ONNX graph: the peer rows of the
ONNX quantization search (targets/onnx/quantize.py, `olive_candidates`).

    /path/to/olive-venv/bin/python benchmarks/olive_quant.py FP32_ONNX OUT_DIR [--hf-model DIR --texts JSON]

The venv: python3 -m venv V && V/bin/pip install olive-ai==0.13.0 onnxruntime==1.31.1 onnx==1.23.2 \
requests datasets torch==2.13.0 (olive-ai requires torch; datasets for the calibration texts).

Runs in its own venv (olive-ai pins its own torch / transformers), never imported by modelport: the
search runs it as a subprocess where MODELPORT_OLIVE_PYTHON names that venv's python
(benchmarks/quant_onnx.py --olive-python sets it). Each pass is run directly
(olive.passes.olive_pass.create_pass_from_dict + Pass.run, CPU accelerator, no workflow cache) and
writes OUT_DIR/<slug>/model.onnx; OUT_DIR/olive.json lists every row:
    {"olive": version, "rows": [{"name", "file" (relative to OUT_DIR) | null, "failed" ("" or one line)}]}
The caller measures the files (size, dev-set quality) with the same function as every candidate.

Passes: OnnxBlockWiseRtnQuantization (RTN; its default also turns the word-embedding Gather into a
4-bit GatherBlockQuantized), OnnxHqqQuantization, OnnxKQuantQuantization (weighted least squares per
group), and, from the Hugging Face model (--hf-model), Olive's PyTorch passes Gptq and
SelectiveMixedPrecision (its mixed-precision selection) followed by OnnxConversion: Olive's route from
those to ONNX is ModelBuilder (decoder LLMs) or OnnxConversion; where a step fails the row says which
and why.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import traceback
from pathlib import Path

os.environ.setdefault("OLIVE_DISABLE_TELEMETRY", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")


def one_line(e: BaseException) -> str:
    msg = (str(e).strip().splitlines() or [""])[0][:200]
    frame = traceback.extract_tb(e.__traceback__)[-1] if e.__traceback__ else None
    where = f" ({Path(frame.filename).name}:{frame.lineno})" if frame else ""
    return f"{type(e).__name__}: {msg}{where}"


class StepFailed(Exception):
    """A step of a chain failed: the message already names the step and the reason."""


def run_pass(pass_name: str, config: dict, model, out: Path):
    from olive.package_config import OlivePackageConfig
    from olive.passes.olive_pass import create_pass_from_dict

    cls = OlivePackageConfig.load_default_config().import_pass_module(pass_name)
    p = create_pass_from_dict(cls, config, disable_search=True)
    return p.run(model, str(out))


def onnx_rows() -> list[tuple[str, str, dict]]:
    return [
        ("Olive OnnxBlockWiseRtnQuantization (defaults: 4-bit sym b128, + Gather)", "OnnxBlockWiseRtnQuantization", {}),
        ("Olive OnnxBlockWiseRtnQuantization (4-bit sym b32, + Gather)", "OnnxBlockWiseRtnQuantization",
         {"block_size": 32}),
        ("Olive OnnxHqqQuantization (defaults: 4-bit b128)", "OnnxHqqQuantization", {}),
        ("Olive OnnxKQuantQuantization (defaults: 4-bit b32)", "OnnxKQuantQuantization", {}),
    ]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("fp32", type=Path, help="the fp32 ONNX file")
    ap.add_argument("out", type=Path)
    ap.add_argument("--hf-model", type=Path, help="the Hugging Face model folder (for Gptq / SelectiveMixedPrecision)")
    ap.add_argument("--texts", type=Path, help="calibration texts, a JSON list of strings (default: Olive's wikitext)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    args.out.mkdir(parents=True, exist_ok=True)
    rows: list[dict] = []
    try:
        import olive
        from olive.model import HfModelHandler, ONNXModelHandler
    except Exception as e:  # noqa: BLE001
        rows.append({"name": "Olive (olive-ai) quantization", "file": None, "failed": f"import olive: {one_line(e)}"})
        (args.out / "olive.json").write_text(json.dumps({"olive": None, "rows": rows}, indent=1))
        return 0

    def record(name: str, fn) -> None:
        slug = "".join(c if c.isalnum() else "_" for c in name)[:60].strip("_")
        dst = args.out / slug
        print(f"olive: {name}", file=sys.stderr, flush=True)
        try:
            handler = fn(dst)
            path = Path(handler.model_path)
            if path.is_dir():
                path = next(path.glob("*.onnx"))
            rows.append({"name": name, "file": str(path.resolve().relative_to(args.out.resolve())), "failed": ""})
        except Exception as e:  # noqa: BLE001 - a pass failing is a row
            rows.append({"name": name, "file": None, "failed": str(e) if isinstance(e, StepFailed) else one_line(e)})

    fp32 = ONNXModelHandler(model_path=str(args.fp32))
    for name, pass_name, config in onnx_rows():
        record(name, lambda dst, p=pass_name, c=config: run_pass(p, c, fp32, dst))

    if args.hf_model:
        hf = HfModelHandler(model_path=str(args.hf_model), task="feature-extraction")
        data = None  # Olive's default: wikitext (a download; fails offline)
        if args.texts:
            from olive.data.template import huggingface_data_config_template

            jsonl = args.out / "calibration.jsonl"
            jsonl.write_text("".join(json.dumps({"text": t}) + "\n" for t in json.loads(args.texts.read_text())))
            data = huggingface_data_config_template(
                model_name=str(args.hf_model), task="text-generation",
                load_dataset_config={"data_name": "json", "data_files": str(jsonl), "split": "train"},
                pre_process_data_config={"add_special_tokens": True, "max_seq_len": 128, "max_samples": 128})

        def torch_then_onnx(dst: Path, passes: list[tuple[str, dict]]):
            model = hf
            for i, (pass_name, config) in enumerate(passes):
                try:
                    model = run_pass(pass_name, config, model, dst / f"{i}-{pass_name}")
                except Exception as e:  # noqa: BLE001
                    raise StepFailed(f"{pass_name} on the HF model: {one_line(e)}") from e
            try:
                return run_pass("OnnxConversion", {"target_opset": 20}, model, dst / "onnx")
            except Exception as e:  # noqa: BLE001
                raise StepFailed(f"OnnxConversion of the {passes[-1][0]} model: {one_line(e)}") from e

        gptq = ("Gptq", {"bits": 4, "group_size": 32, "sym": False, "data_config": data})
        record("Olive Gptq (4-bit asym b32) -> OnnxConversion", lambda dst: torch_then_onnx(dst, [gptq]))
        smp = ("SelectiveMixedPrecision", {"algorithm": "snr", "ratio": 0.75, "group_size": 32, "sym": False})
        record("Olive SelectiveMixedPrecision (snr, 75% at 4-bit) -> Gptq -> OnnxConversion",
               lambda dst: torch_then_onnx(dst, [smp, gptq]))
    (args.out / "olive.json").write_text(json.dumps({"olive": olive.__version__, "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
