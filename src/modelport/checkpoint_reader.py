"""Reading a causal LM checkpoint one tensor at a time: what lets a 3B model convert in 24 GB (issue 18).

`Checkpoint` reads safetensors tensors with plain reads (no mmap: mapped pages would stay in the RSS),
`parameters_on_meta` builds a model without allocating its parameters, `load_causal_lm_streamed` is
torch_model.load_causal_lm's model assembled from the two. Used by torch_model (every decoder load) and
targets/onnx/stream.py (the streamed export); it imports neither, so neither import forms a cycle.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from .errors import ModelportError


class Checkpoint:
    """Float32 arrays of a checkpoint's tensors, read one at a time from safetensors (no mmap, so the
    pages read do not stay in the process's RSS). Pickle checkpoints (only with --allow-pickle) are
    loaded whole by torch: no streaming for them."""

    DTYPES = {"F32": np.float32, "F16": np.float16, "F64": np.float64, "BF16": np.uint16}

    def __init__(self, files: list[Path]) -> None:
        self.index: dict[str, tuple[Path, int, int, str, tuple[int, ...]]] = {}
        self.loaded: dict[str, np.ndarray] = {}
        for f in files:
            f = Path(f)
            if f.suffix != ".safetensors":
                import torch

                state = torch.load(f, map_location="cpu", weights_only=True, mmap=True)
                self.loaded.update({k: v.float().numpy() for k, v in state.items()})
                continue
            with open(f, "rb") as fh:
                n = int.from_bytes(fh.read(8), "little")
                header = json.loads(fh.read(n))
            for name, t in header.items():
                if name != "__metadata__":
                    start, end = t["data_offsets"]
                    self.index[name] = (f, 8 + n + start, end - start, t["dtype"], tuple(t["shape"]))

    def __contains__(self, name: str) -> bool:
        return name in self.index or name in self.loaded

    def array(self, name: str) -> np.ndarray:
        """The tensor as float32 (bfloat16 and float16 widen exactly, as torch's float32 load does)."""
        if name in self.loaded:
            return self.loaded[name]
        path, offset, length, dtype, shape = self.index[name]
        if dtype not in self.DTYPES:
            raise ModelportError(f"{path.name}: tensor {name} is {dtype}; the streamed export reads float tensors only")
        with open(path, "rb") as fh:
            fh.seek(offset)
            raw = np.fromfile(fh, dtype=np.uint8, count=length)
        if dtype == "BF16":
            values = (raw.view(np.uint16).astype(np.uint32) << 16).view(np.float32)
        else:
            values = raw.view(self.DTYPES[dtype]).astype(np.float32, copy=False)
        return values.reshape(shape)


@contextmanager
def parameters_on_meta() -> Iterator[None]:
    """Modules built inside get their parameters on the meta device, buffers for real (accelerate's
    init_empty_weights(include_buffers=False), which transformers 5 no longer ships)."""
    import torch

    register = torch.nn.Module.register_parameter

    def on_meta(module, name, param):  # type: ignore[no-untyped-def]
        register(module, name, param)
        if param is not None and param.device.type != "meta":  # a meta one is being tied: keep it
            module._parameters[name] = torch.nn.Parameter(param.to("meta"), requires_grad=False)

    torch.nn.Module.register_parameter = on_meta  # type: ignore[method-assign]
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = register  # type: ignore[method-assign]


def load_causal_lm_streamed(model_dir: Path, trust_remote_code: bool = False):
    """torch_model.load_causal_lm's model (float32, eager attention, eval, the checkpoint's generation
    config), its weights read tensor by tensor without mmap (Checkpoint).

    from_pretrained maps the safetensors files and copies from them: the mapped pages it touched count
    in the process's RSS next to the copy, twice the weights at load (measured: the 1B scale model's q4
    conversion peaked at 13.2 GB, 2.7x its 4.9 GB of weights). Here a model is built with its parameters
    on the meta device (buffers real), then each parameter is set from one read; tied names share it."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, GenerationConfig

    model_dir = Path(model_dir)
    files = sorted(model_dir.glob("*.safetensors"))
    config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
    with parameters_on_meta():
        model = AutoModelForCausalLM.from_config(config, attn_implementation="eager", dtype=torch.float32,
                                                 trust_remote_code=trust_remote_code)
    ckpt = Checkpoint(files)
    groups: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        groups.setdefault(id(p), []).append(name)
    for names in groups.values():
        found = [n for n in names if n in ckpt]
        if not found:
            raise ModelportError(f"{model_dir.name}: no tensor {names[0]} in the checkpoint")
        param = torch.nn.Parameter(torch.from_numpy(ckpt.array(found[0])), requires_grad=False)
        for name in names:
            owner, _, attr = name.rpartition(".")
            setattr(model.get_submodule(owner), attr, param)
    if (model_dir / "generation_config.json").is_file():
        model.generation_config = GenerationConfig.from_pretrained(model_dir)
    return model.eval()
