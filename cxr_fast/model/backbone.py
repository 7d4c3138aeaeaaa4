"""timm backbone factory, with the failures a user can cause turned into one-line UserErrors."""

from __future__ import annotations

import difflib
from pathlib import Path

import timm
import torch
from torch import nn

from cxr_fast.errors import UserError


def _first_line(e: BaseException) -> str:
    msg = str(e).strip().splitlines()
    return f"{type(e).__name__}: {msg[0] if msg else ''}"[:300]


def _cfg_value(name: str, key: str):
    try:
        return timm.models.get_pretrained_cfg_value(name, key)
    except RuntimeError:  # an architecture registered without any pretrained cfg
        return None


def _check_name(name: str) -> None:
    if timm.is_model(name):
        if "." in name:  # "arch.tag": the tag must exist too
            try:
                timm.models.get_pretrained_cfg(name, allow_unregistered=False)
            except RuntimeError as e:
                raise UserError(f"--model {name!r}: {_first_line(e)}") from e
        return
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see timm.list_models()"
    raise UserError(f"--model {name!r} is not a timm model{hint}")


def _load_weights_file(path: Path) -> dict[str, torch.Tensor]:
    """A backbone state_dict from .safetensors, or .pth/.pt/.bin through torch.load(weights_only=True). A checkpoint
    dict is unwrapped the way timm does ("state_dict_ema", "model_ema", "state_dict", "model", so a cxr_fast fold
    checkpoint works too) and DDP "module." prefixes are stripped."""
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            ckpt = load_file(str(path), device="cpu")
        else:
            ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle / safetensors / zip errors all mean the same thing to the user
        raise UserError(f"--weights {path}: cannot read a state dict ({_first_line(e)})") from e
    if isinstance(ckpt, dict):
        for key in ("state_dict_ema", "model_ema", "state_dict", "model"):
            if isinstance(ckpt.get(key), dict):
                ckpt = ckpt[key]
                break
    if not isinstance(ckpt, dict) or not ckpt or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        raise UserError(f"--weights {path}: not a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def create_backbone(name: str, num_classes: int, in_chans: int = 1, pretrained: bool = True,
                    weights: str | Path | None = None, drop_rate: float = 0.4) -> nn.Module:
    """timm.create_model(name) with a `num_classes` head over `in_chans` input channels.

    pretrained: ImageNet weights from the Hugging Face hub (timm adapts the first conv to `in_chans` and drops the
    1000-class head). weights: a local file instead of the hub, adapted by timm the same way; its first-conv channel
    count is read from the file, so 3-channel ImageNet weights and 1-channel cxr_fast weights both load.
    """
    _check_name(name)
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    kwargs = {"num_classes": num_classes, "in_chans": in_chans, "drop_rate": drop_rate}
    if weights is not None:
        path = Path(weights)
        if not path.is_file():
            raise UserError(f"--weights {path}: no such file")
        sd = _load_weights_file(path)
        file_keys = set(sd)
        overlay: dict = {"state_dict": sd}
        # timm adapts the first conv from pretrained_cfg.input_size[0] channels; tell it what the file really has
        first_convs = _cfg_value(name, "first_conv") or ()
        first_convs = (first_convs,) if isinstance(first_convs, str) else tuple(first_convs)
        for conv in first_convs:
            w = sd.get(conv + ".weight")
            if w is not None and w.ndim == 4:
                size = _cfg_value(name, "input_size") or (3, 224, 224)
                overlay["input_size"] = (int(w.shape[1]), *tuple(size)[1:])
                break
        try:
            model = timm.create_model(name, pretrained=True, pretrained_cfg_overlay=overlay, **kwargs)
        except Exception as e:  # size mismatches surface as RuntimeError from load_state_dict
            raise UserError(f"--weights {path} does not fit --model {name} ({_first_line(e)})") from e
        _drop_state_dict_ref(model)
        # timm loads non-strictly once it drops a mismatched head, so a file for another architecture would load
        # "successfully" and leave a random network: require that the file covers the model's non-head tensors
        head = set(_head_keys(model))
        body = [k for k in model.state_dict() if k not in head and not k.endswith("num_batches_tracked")]
        missing = [k for k in body if k not in file_keys]
        if len(missing) > len(body) // 10:
            missing = [k for k in body if k not in _filtered_keys(model, path)]
        if len(missing) > len(body) // 10:
            raise UserError(f"--weights {path} does not fit --model {name}: {len(missing)} of {len(body)} tensors "
                            f"missing (e.g. {missing[0]})")
        return model
    if not pretrained:
        return timm.create_model(name, pretrained=False, **kwargs)
    try:
        return timm.create_model(name, pretrained=True, **kwargs)
    except Exception as e:  # offline: huggingface_hub / urllib / requests raise a zoo of types
        raise UserError(f"could not fetch pretrained weights for --model {name} ({_first_line(e)}); offline? pass "
                        "--no-pretrained, or --weights PATH to a local file (HF_HUB_OFFLINE=1 fails fast)") from e


def _head_keys(model: nn.Module) -> list[str]:
    """State-dict keys of the classifier head, which a weights file may lack or have at another size."""
    classifier = model.pretrained_cfg.get("classifier") if hasattr(model, "pretrained_cfg") else None
    names = (classifier,) if isinstance(classifier, str) else tuple(classifier or ())
    return [k for k in model.state_dict() if any(k == n or k.startswith(n + ".") for n in names)]


def _drop_state_dict_ref(model: nn.Module) -> None:
    # timm keeps the overlay in model.pretrained_cfg: drop it, or the whole file stays in memory and is deep-copied
    # along with the model (EMA)
    for attr in ("pretrained_cfg", "default_cfg"):
        cfg = getattr(model, attr, None)
        if isinstance(cfg, dict):
            cfg.pop("state_dict", None)


def _filtered_keys(model: nn.Module, path: Path) -> set[str]:
    """Keys of the weights file after the model module's own `checkpoint_filter_fn` (which timm applies on load and
    which remaps checkpoints in a foreign layout); empty if the module has none."""
    import sys

    filter_fn = getattr(sys.modules.get(type(model).__module__), "checkpoint_filter_fn", None)
    if filter_fn is None:
        return set()
    try:
        return set(filter_fn(_load_weights_file(path), model))
    except Exception:  # noqa: BLE001 - a filter that cannot handle the file just means no remapped keys
        return set()
