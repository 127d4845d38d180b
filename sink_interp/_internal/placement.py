"""Where a model's tensors live: one device, or split / offloaded by Hugging Face accelerate's ``device_map``.

Under a ``device_map`` with CPU or disk offload the offloaded parameters sit on the ``meta`` device and
accelerate's hooks bring them in around each module's own forward. So: inputs go to ``cfg.device`` (the
embedding's device, :func:`model_device`), tensors made for one layer go to that layer's execution device
(:func:`layer_device`), and weights read outside a forward pass are read inside :func:`materialized`.

Examples:
    >>> from sink_interp import tiny_model
    >>> m = tiny_model()
    >>> model_device(m), layer_device(m, 1), device_map(m)
    (device(type='cpu'), device(type='cpu'), None)
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch


def device_map(model: Any) -> dict[str, str] | None:
    """The realised ``hf_device_map`` of the model inside the bridge (module -> device as text), None without one."""
    hf = getattr(model, "original_model", model)
    dm = getattr(hf, "hf_device_map", None)
    if not dm:
        return None
    return {str(k): str(v) for k, v in dm.items()}


def offloaded(model: Any) -> list[str]:
    """Modules of the device map kept on the CPU or on disk and brought in per forward (empty when none)."""
    dm = device_map(model)
    if not dm or len(set(dm.values())) == 1:  # one place for everything: nothing is brought in from elsewhere
        return []
    return [k for k, v in dm.items() if v.lower() in ("cpu", "disk")]


def split(model: Any) -> bool:
    """Whether a device map puts the model on more than one device or offloads part of it."""
    dm = device_map(model)
    return bool(dm) and len(set(dm.values())) > 1


def describe_map(model: Any) -> str:
    """The device map in a few words: ``"cpu: 10 modules, disk: 24 modules"`` ("" without one)."""
    dm = device_map(model) or {}
    counts: dict[str, int] = {}
    for v in dm.values():
        counts[v] = counts.get(v, 0) + 1
    return ", ".join(f"{k}: {n} module{'s' * (n != 1)}" for k, n in counts.items())


def _first_real_param_device(module: torch.nn.Module) -> torch.device | None:
    for p in module.parameters():
        if p.device.type != "meta":
            return p.device
    return None


def model_device(model: Any) -> torch.device:
    """The device inputs go to: under a device map ``cfg.device`` (the embedding's device, never ``meta``),
    else the first parameter's device."""
    dev = getattr(getattr(model, "cfg", None), "device", None)
    if dev is not None and str(dev) != "meta" and device_map(model):
        return torch.device(dev)
    real = _first_real_param_device(model) if isinstance(model, torch.nn.Module) else None
    if real is not None:
        return real
    return torch.device(dev) if dev is not None and str(dev) != "meta" else torch.device("cpu")


def module_device(module: torch.nn.Module, default: torch.device | None = None) -> torch.device:
    """Where ``module`` computes: an accelerate hook's execution device, else its parameters' device.

    Parameters on ``meta`` (offloaded) do not count; ``default`` (else the CPU) when nothing says more.
    A module whose parameters all sit on ``meta`` without any hook computes on ``meta``.
    """
    for sub in module.modules():
        hook = getattr(sub, "_hf_hook", None)
        dev = getattr(hook, "execution_device", None)
        if dev is None:
            for h in getattr(hook, "hooks", ()) or ():  # a SequentialHook
                dev = getattr(h, "execution_device", None) or dev
        if dev is not None:
            return torch.device(dev) if not isinstance(dev, int) else torch.device("cuda", dev)
    dev = _first_real_param_device(module)
    if dev is not None:
        return dev
    if any(True for _ in module.parameters()):  # every parameter on meta and no hook to bring them in
        return torch.device("meta")
    return default or torch.device("cpu")


def layer_device(model: Any, layer: int) -> torch.device:
    """The device block ``layer``'s attention computes on (where tensors made for that layer belong)."""
    return module_device(model.blocks[layer].attn, default=model_device(model))


@contextlib.contextmanager
def materialized(module: torch.nn.Module) -> Iterator[None]:
    """Within the block, ``module``'s offloaded parameters hold their real values (no-op when none are offloaded).

    Reading weights outside a forward pass must happen inside this; copy what you keep (``.clone()``),
    since the real tensors are dropped again on exit.
    """
    hooked = [sub for sub in module.modules() if getattr(sub, "_hf_hook", None) is not None]
    if not hooked:
        yield
        return
    from accelerate.utils import align_module_device

    with contextlib.ExitStack() as stack:
        for sub in hooked:
            stack.enter_context(align_module_device(sub))
        yield
