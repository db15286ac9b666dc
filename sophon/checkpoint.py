"""Checkpoints as safetensors + a JSON sidecar: never a pickle, so loading runs no code.

A checkpoint `NAME` is `NAME.safetensors` (tensors) and `NAME.json` (everything else). Both are
written to a temporary file and renamed, so an interrupted save never leaves a half-written file
in place of a good one.
"""

import json
import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn


class CheckpointError(RuntimeError):
    pass


def _paths(name: str | Path) -> tuple[Path, Path]:
    name = Path(name)
    if name.suffix in (".safetensors", ".json"):
        name = name.with_suffix("")
    return name.with_suffix(".safetensors"), name.with_suffix(".json")


def _unshared(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """safetensors refuses tensors that share memory (GPT-2 ties wte and lm_head): copy repeats."""
    seen, out = set(), {}
    for key, tensor in tensors.items():
        tensor = tensor.detach()
        ptr = (tensor.untyped_storage().data_ptr(), tensor.storage_offset(), tuple(tensor.shape))
        out[key] = tensor.clone().contiguous() if ptr in seen or not tensor.is_contiguous() else tensor
        seen.add(ptr)
    return {k: v.cpu() for k, v in out.items()}


def save(name: str | Path, tensors: dict[str, torch.Tensor], meta: dict) -> Path:
    weights, sidecar = _paths(name)
    weights.parent.mkdir(parents=True, exist_ok=True)
    tmp_w, tmp_j = weights.with_name(weights.name + ".tmp"), sidecar.with_name(sidecar.name + ".tmp")
    save_file(_unshared(tensors), str(tmp_w))
    tmp_j.write_text(json.dumps(meta, indent=2, default=str))
    os.replace(tmp_w, weights)
    os.replace(tmp_j, sidecar)
    return weights


def load(name: str | Path, device: str | torch.device = "cpu") -> tuple[dict[str, torch.Tensor], dict]:
    weights, sidecar = _paths(name)
    if not weights.exists():
        raise CheckpointError(f"no checkpoint at {weights}; pass the .safetensors file that a SOPHON run "
                              "wrote under results/<loss>/<arch>_<dataset>/<time>/checkpoints/")
    try:
        tensors = load_file(str(weights), device=str(device))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"checkpoint {weights} is corrupt or truncated ({err}); use another "
                              "checkpoint of the run, or rerun it with --resume") from err
    meta = {}
    if sidecar.exists():
        try:
            meta = json.loads(sidecar.read_text())
        except json.JSONDecodeError as err:
            raise CheckpointError(f"sidecar {sidecar} is not valid JSON ({err})") from err
    return tensors, meta


MODEL_PREFIX = "model."  # a SOPHON run's checkpoint holds the model under this prefix, beside optimizer state


def model_state(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The model's state dict inside a checkpoint's tensors (empty when there is none)."""
    return {k[len(MODEL_PREFIX):]: v for k, v in tensors.items() if k.startswith(MODEL_PREFIX)}


def save_model(name: str | Path, model: nn.Module, meta: dict) -> Path:
    return save(name, model.state_dict(), meta)


def load_model(name: str | Path, model: nn.Module, strict: bool = True) -> dict:
    """Load weights into `model` in place and return the sidecar metadata."""
    tensors, meta = load(name, device=next(model.parameters()).device)
    missing, unexpected = model.load_state_dict(tensors, strict=False)
    if strict and (missing or unexpected):
        raise CheckpointError(f"checkpoint {name} does not fit this model (missing {list(missing)[:5]}, "
                              f"unexpected {list(unexpected)[:5]}); check --arch matches the run "
                              f"that wrote it ({meta.get('arch', 'unknown arch')})")
    return meta


def optimizer_tensors(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict, dict]:
    """Split an optimizer's state into tensors (for safetensors) and the rest (for JSON)."""
    state = optimizer.state_dict()
    tensors, scalars = {}, {"param_groups": state["param_groups"], "state": {}}
    for pid, slots in state["state"].items():
        scalars["state"][str(pid)] = {}
        for slot, value in slots.items():
            if isinstance(value, torch.Tensor):
                tensors[f"{prefix}.{pid}.{slot}"] = value
            else:
                scalars["state"][str(pid)][slot] = value
    return tensors, scalars


def restore_optimizer(optimizer: torch.optim.Optimizer, prefix: str, tensors: dict, scalars: dict) -> None:
    state = {}
    for key, value in tensors.items():
        if key.startswith(prefix + "."):
            _, pid, slot = key.split(".", 2)
            state.setdefault(int(pid), {})[slot] = value
    for pid, slots in scalars["state"].items():
        state.setdefault(int(pid), {}).update(slots)
    optimizer.load_state_dict({"state": state, "param_groups": scalars["param_groups"]})
