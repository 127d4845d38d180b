"""Argument checks that raise errors naming the argument and the fix."""

from __future__ import annotations

from typing import Any

import torch

from .probe import as_tokens


class MissingDependencyError(ImportError):
    """An optional dependency is not installed; the message says how to install it."""


def require(module: str, pip_name: str | None = None, purpose: str = "") -> Any:
    """Import an optional dependency or raise an error that says how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:  # pragma: no cover - exercised by tests with monkeypatch
        what = f" for {purpose}" if purpose else ""
        raise MissingDependencyError(
            f"the optional dependency '{module}' is needed{what} but is not installed; fix: pip install {pip_name or module}"
        ) from e


def check_eps(eps: float, name: str = "eps") -> float:
    try:
        value = float(eps)
    except (TypeError, ValueError):
        raise ValueError(f"{name} must be a number in (0, 1), got {eps!r}") from None
    if not 0.0 < value < 1.0:
        raise ValueError(
            f"{name} must lie strictly between 0 and 1 (a head is a sink head when alpha > {name}); "
            f"got {eps!r}. The paper's default is {name}=0.3."
        )
    return value


def check_tokens(tokens: Any, d_vocab: int | None = None, min_length: int = 2, name: str = "tokens") -> torch.Tensor:
    """Validate a [batch, pos] tensor of token ids (or a :class:`~sink_interp.ProbeSet`'s) and return it as int64."""
    tokens = as_tokens(tokens)
    if isinstance(tokens, (list, tuple)):
        try:
            tokens = torch.tensor(tokens)
        except (TypeError, ValueError) as e:
            raise ValueError(
                f"{name} must be a [batch, pos] tensor of token ids (equal-length rows); got a ragged list: {e}"
            ) from None
    if not isinstance(tokens, torch.Tensor):
        raise TypeError(
            f"{name} must be a torch.Tensor of token ids with shape [batch, pos], got {type(tokens).__name__}. "
            "Fix: build it with sink_interp.probe_tokens(model, ...) or model.to_tokens(text, prepend_bos=...)."
        )
    if tokens.dtype.is_floating_point or tokens.dtype == torch.bool:
        raise ValueError(f"{name} must hold integer token ids, got dtype {tokens.dtype}")
    if tokens.ndim == 1:
        raise ValueError(
            f"{name} must be 2-D [batch, pos], got shape {tuple(tokens.shape)}; fix: pass {name}[None] for one sample"
        )
    if tokens.ndim != 2:
        raise ValueError(f"{name} must be 2-D [batch, pos], got shape {tuple(tokens.shape)}")
    if tokens.shape[0] == 0:
        raise ValueError(f"{name} is empty (batch size 0); pass at least one sample")
    if tokens.shape[1] < min_length:
        raise ValueError(
            f"{name} has length {tokens.shape[1]}; the sink score needs at least {min_length} positions (length >= {min_length})"
        )
    if d_vocab is not None:
        lo, hi = int(tokens.min()), int(tokens.max())
        if lo < 0 or hi >= d_vocab:
            raise ValueError(
                f"{name} holds ids outside the model's vocabulary [0, {d_vocab}): min {lo}, max {hi}. "
                "Fix: tokenize with this model's tokenizer (model.to_tokens or sink_interp.probe_tokens)."
            )
    return tokens.long()


def check_positive_int(value: Any, name: str, minimum: int = 1) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        try:
            if float(value) != int(value):
                raise ValueError
            value = int(value)
        except (TypeError, ValueError):
            raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


class UnsupportedArchitecture(NotImplementedError):
    """The installed TransformerLens bridge cannot load or run this architecture; the message is one line naming it."""


def bridge_failure(model: Any, e: BaseException) -> BaseException:
    """``e`` raised inside TransformerLens or transformers while running ``model``, as one line naming the architecture.

    Errors raised elsewhere (a user's hook, sink_interp itself) come back unchanged.
    """
    import traceback

    frames = [f.filename.replace("\\", "/") for f in traceback.extract_tb(e.__traceback__)]
    ours = max((i for i, f in enumerate(frames) if "/sink_interp/" in f), default=-1)
    after = frames[ours + 1 :]
    libs = ("/transformer_lens/", "/transformers/", "/torch/")
    if not any("/transformer_lens/" in f for f in after) or not after or not any(lib in after[-1] for lib in libs):
        return e
    hf = getattr(model, "original_model", None)
    arch = type(hf).__name__ if hf is not None else type(model).__name__
    first = (str(e).strip().splitlines() or [""])[0][:200]
    where = [f for f in after if "/transformer_lens/" in f][-1].split("/transformer_lens/")[-1]
    return UnsupportedArchitecture(
        f"the TransformerLens bridge fails to run {arch} ({type(e).__name__}: {first}, in transformer_lens/{where}); "
        "the installed TransformerLens and transformers do not support this architecture together; see docs/support.md"
    )


class NonFiniteError(ValueError):
    """A NaN or Inf reached a result; the message names where it first appeared and the likely cause.

    Every analysis raises it instead of reporting a number made from non-finite values (a damaged
    checkpoint, a hook or an intervention that returned NaN, an overflow in half precision).

    Examples:
        >>> import torch
        >>> from sink_interp import tiny_model, measure_sinks
        >>> from sink_interp.capture import attach_hooks
        >>> m = tiny_model()
        >>> def spoil(x, hook):
        ...     return x * float("nan")
        >>> with attach_hooks(m, [("blocks.1.hook_resid_pre", spoil)]):
        ...     try:
        ...         measure_sinks(m, torch.randint(4, 128, (2, 8)), progress=False)
        ...     except NonFiniteError as e:
        ...         print(str(e)[:50])
        a hook on blocks.1.hook_resid_pre returned NaN/Inf
    """
