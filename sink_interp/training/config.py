"""``TrainConfig``: every knob of the sink laboratory, with the paper's settings, and named presets.

Each field's comment gives the paper's setting (Gu et al. 2025, "When attention
sink emerges", official configs in ``sail-sg/Attention-Sink``) or Guo et al.
2024's (Bigram-Backcopy, ``GuoTianYu2000/Active-Dormant-Attention``) where it
differs. CPU presets (``bb-*``, ``text-*``) are scaled down to run in minutes
on one core; ``gpu-*`` presets use the paper's 60M-model recipe.

Example:
    >>> cfg = preset("bb-softmax", steps=10)
    >>> cfg.kernel, cfg.steps
    ('softmax', 10)
    >>> preset("bb-sigmoid-nonorm").kernel
    'sigmoid'
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, asdict, dataclass, fields, replace
from typing import Any

TASKS = ("bb", "text")
POSITIONS = ("rope", "nope", "alibi", "sinusoidal", "learned", "relative", "t5")
KERNELS = ("softmax", "sigmoid", "elu", "relu", "softpick", "linear", "mlp")
ATTN_NORMS = ("auto", "none", "sum", "length", "max1")
FFNS = ("swiglu", "geglu", "reglu", "gelu", "relu", "swish")
V_BIAS = ("none", "learn", "zero", "e1", "ones")


@dataclass(frozen=True)
class TrainConfig:
    """All knobs of one training run. Frozen: derive variants with :meth:`replace`.

    Example:
        >>> cfg = TrainConfig(task="bb", kernel="sigmoid", attn_norm="none", steps=500)
        >>> cfg.metric_score  # un-normalised kernels are scored through the proxy A / sum A
        'proxy'
        >>> cfg.replace(attn_norm="sum").metric_score
        'softmax'
    """

    name: str = "custom"

    # ------------------------------------------------------------------ data
    task: str = "bb"  # "bb" (Bigram-Backcopy, Guo et al.) or "text" (natural English, BPE)
    seq_len: int = 64  # tokens per sequence, BOS included (paper: 2048; Guo BB: 256)
    bb_vocab: int = 64  # BB: ordinary tokens (Guo: 65 Shakespeare characters)
    bb_source: str = "natural"  # BB bigram source: "natural" chars, "random" chain, or a JSONL path
    bb_triggers: int = 3  # BB: number of trigger tokens, the most frequent ones (Guo: k = 3)
    bb_bos_num: int = 1  # BB: BOS tokens at the start (Guo: 1)
    bb_delimiter_p: float = 0.0  # BB: delimiter probability (Guo: 0)
    text_corpus: str = "natural"  # text: "natural" (shipped), "big" (scripts/build_corpus.py) or a JSONL path
    text_vocab: int = 2048  # text: byte-level BPE vocabulary (paper: Llama's 32000)
    bos: str = "none"  # text packing: "none" random windows (paper default), "fixed" BOS at pos 1, "doc" BOS per document
    intra_doc: bool = False  # mask attention across documents (Barbero et al. table)
    fixed_token_pos: int | None = None  # 1-indexed position holding a fixed token (paper: 1, 2, 3)
    fixed_token_id: int = 1  # the fixed token (official code: id 1)
    data_tokens: int | None = None  # unique training tokens (paper: 50M .. 5B); None = all / infinite
    sink_token: bool = False  # prepend a learnable sink token (Xiao et al.; paper table row 2)
    random_token_pos: int | None = None  # first uniformly random position, 1-indexed (official random_data.py: start 0 = 1)
    random_token_count: int = 1  # random positions from random_token_pos on (official: end - start; paper: 1, the first token)

    # ------------------------------------------------------------------ model
    n_layers: int = 2  # paper 60M: 10 layers; Guo: 1-3
    d_model: int = 128  # paper: 768; Guo: 256
    n_heads: int = 4  # paper: 8; Guo: 1
    n_kv_heads: int | None = None  # None = multi-head attention
    d_mlp: int = 256  # paper: SwiGLU 1536
    pos: str = "rope"  # "rope" (paper base), "nope", "alibi", "sinusoidal", "learned", "relative" (official), "t5" (learned)
    rel_buckets: int = 32  # relative / t5: distance buckets, half exact, half log-spaced (official model_relpos.py: 32)
    rel_max_distance: int = 128  # relative / t5: distance where the last bucket starts (official: 128)
    rope_theta: float = 10000.0
    norm: str = "pre"  # "pre" (paper base) or "post" (x = Norm(x + F(x)), official model_postln)
    ffn: str = "swiglu"  # "swiglu" (paper base), "geglu", "reglu" (gated) or "gelu", "relu", "swish"
    init: str = "official"  # "official": N(0, sqrt(2/5d)), output projections 1/sqrt(d_mlp)/L; "hf": N(0, 0.02)
    tie_embeddings: bool = False

    # ------------------------------------------------------------------ attention
    kernel: str = "softmax"  # "softmax", "sigmoid", "elu" (elu+1), "relu", "softpick", "linear", "mlp" (learned phi(q).phi(k))
    attn_norm: str = "auto"  # row normaliser: "auto" (kernel's own), "none", "sum", "length" (1/t), "max1" (max(|sum|,1))
    softmax_alpha: float = 1.0  # softmax with Z -> Z / alpha (rows sum to alpha)
    softmax_p: float = 1.0  # p-norm softmax: softmax(p s)^(1/p)
    k_bias: bool = False  # learnable key bias k* (an extra key column: softmax([q k*, q K^T]))
    k_bias_dims: int | None = None  # d_a learnable dims of k* (the first d_a, the rest 0); paper: 1..64 of d_h 64; None: all
    v_bias: str = "none"  # v*: "learn", "zero" (K bias with v*=0), "e1"/"ones" (fixed v', v''), "none"
    v_bias_scale: float = 1.0  # fixed v* = scale * v' (or v''); paper: 1, 5, 20
    bias_per_head: bool = False  # one k*/v* per head (paper: both variants)
    sink_logit: bool = False  # learned per-head sink logit (gpt-oss style), value 0
    prefix: int = 0  # prefix LM: p prefix tokens seen by every query, loss on the rest
    window: int | None = None  # sliding-window attention of width w (w keys incl. the query)

    # ------------------------------------------------------------------ optimisation
    optimizer: str = "adamw"  # "adamw" (paper, Guo) or "sgd" (Guo's mitigation, momentum 0.9)
    lr: float = 1e-3  # paper: 4e-4; Guo: 3e-4 (SGD: 3e-2)
    min_lr: float = 1e-5  # paper: cosine to 1e-5
    schedule: str = "cosine"  # "cosine" with warmup (paper) or "constant" (Guo)
    warmup: int = 50  # paper: 1000 steps
    betas: tuple[float, float] = (0.9, 0.95)  # paper: (0.9, 0.95); Guo: (0.9, 0.99)
    adam_eps: float = 1e-8
    momentum: float = 0.9  # SGD momentum (Guo)
    weight_decay: float = 0.1  # paper: 0.1 (decoupled, AdamW); Guo: 1e-4
    wd_on: str = "all"  # "all" parameters (official runs, norm gains included) or "no-norms"
    grad_clip: float = 1.0  # paper: 1.0; 0 disables
    batch_size: int = 32  # paper: 512 x 2048 tokens; Guo: 512 x 256
    micro_batch: int | None = None  # samples per forward/backward; the step's gradient accumulates over the batch; None: all
    steps: int = 1000  # paper: 20k-25k; Guo: 10k

    # ------------------------------------------------------------------ run
    seed: int = 0  # initialisation seed; the data stream uses seed + 1
    eval_every: int = 100
    eval_batches: int = 4  # validation batches (of batch_size) for val_loss
    probe_n: int = 64  # sequences for the sink metric (eval probe)
    eps: float = 0.3  # sink threshold (paper default)
    ckpt_every: int = 100

    def __post_init__(self) -> None:
        self._check_types()
        checks = [
            ("task", TASKS),
            ("pos", POSITIONS),
            ("kernel", KERNELS),
            ("attn_norm", ATTN_NORMS),
            ("ffn", FFNS),
            ("v_bias", V_BIAS),
            ("norm", ("pre", "post")),
            ("init", ("official", "hf")),
            ("optimizer", ("adamw", "sgd")),
            ("schedule", ("cosine", "constant")),
            ("wd_on", ("all", "no-norms")),
            ("bos", ("none", "fixed", "doc")),
        ]
        for name, allowed in checks:
            if getattr(self, name) not in allowed:
                raise ValueError(f"TrainConfig.{name} must be one of {allowed}, got {getattr(self, name)!r}")
        for name in (
            "seq_len",
            "n_layers",
            "d_model",
            "n_heads",
            "d_mlp",
            "batch_size",
            "eval_every",
            "eval_batches",
            "probe_n",
            "ckpt_every",
        ):
            v = getattr(self, name)
            if not isinstance(v, int) or isinstance(v, bool) or v < 1:
                raise ValueError(f"TrainConfig.{name} must be a positive integer, got {v!r}")
        if not isinstance(self.steps, int) or self.steps < 0:
            raise ValueError(f"TrainConfig.steps must be an integer >= 0, got {self.steps!r}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        kv = self.n_kv_heads or self.n_heads
        if self.n_heads % kv:
            raise ValueError(f"n_heads ({self.n_heads}) must be a multiple of n_kv_heads ({kv})")
        if (self.d_model // self.n_heads) % 2 and self.pos == "rope":
            raise ValueError("RoPE needs an even head dimension; fix: change d_model or n_heads")
        if self.micro_batch is not None and (
            isinstance(self.micro_batch, bool) or self.micro_batch < 1 or self.batch_size % self.micro_batch
        ):
            raise ValueError(
                f"micro_batch must divide batch_size ({self.batch_size}), e.g. {self.batch_size // 4 or 1}; got {self.micro_batch!r}"
            )
        if self.window is not None and self.window < 1:
            raise ValueError(f"window must be >= 1 (keys incl. the query) or None, got {self.window}")
        if not 0 <= self.prefix < self.seq_len - 1:
            raise ValueError(f"prefix must be in 0..{self.seq_len - 2}, got {self.prefix}")
        if self.fixed_token_pos is not None and not 1 <= self.fixed_token_pos <= self.seq_len:
            raise ValueError(f"fixed_token_pos must be in 1..{self.seq_len}, got {self.fixed_token_pos}")
        if self.kernel == "relu" and (self.k_bias or self.sink_logit):
            raise ValueError("k_bias / sink_logit are extra attention columns, not available with kernel='relu'")
        if self.v_bias in ("zero", "e1", "ones") and not self.k_bias:
            raise ValueError(
                f"v_bias={self.v_bias!r} is the value of the K-bias column; fix: k_bias=True (or v_bias='learn' for a V bias only)"
            )
        self._check_text_corpus()
        self._check_new_knobs()
        norms = {
            "softmax": ("auto", "sum"),
            "softpick": ("auto", "sum"),
            "sigmoid": ("auto", "none", "sum"),
            "elu": ("auto", "none", "sum"),
            "linear": ("auto", "none", "max1"),
            "mlp": ("auto", "none", "max1"),
            "relu": ("auto", "none", "sum", "length"),
        }
        if self.attn_norm not in norms[self.kernel]:
            raise ValueError(
                f"attn_norm={self.attn_norm!r} is not available for kernel={self.kernel!r}; choose one of {norms[self.kernel]}"
            )
        if self.softmax_alpha != 1.0 and self.softmax_p != 1.0:
            raise ValueError("choose one of softmax_alpha and softmax_p")
        if (self.softmax_alpha != 1.0 or self.softmax_p != 1.0) and self.kernel != "softmax":
            raise ValueError("softmax_alpha / softmax_p modify the softmax kernel; fix: kernel='softmax'")
        if self.task == "bb" and (self.bos != "none" or self.intra_doc):
            raise ValueError("bos / intra_doc are text packing modes; BB sequences always start with bb_bos_num BOS tokens")
        if not 0.0 < self.eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {self.eps}")
        for span, names in _RANGES.items():
            for name in names:
                v = getattr(self, name)
                if v is not None and not _within(v, span):
                    raise ValueError(f"TrainConfig.{name} must be in {span}, got {v!r}")
        if not all(0.0 <= b < 1.0 for b in self.betas):
            raise ValueError(f"TrainConfig.betas must be two numbers in [0, 1), got {list(self.betas)}; e.g. betas=[0.9,0.95]")

    def _check_text_corpus(self) -> None:
        """``text_corpus`` is a corpus name or looks like a path (a typo of a name is caught here;
        whether the file exists is checked when the data is built)."""
        from ..tasks import CORPUS_NAMES

        c = self.text_corpus
        if c in CORPUS_NAMES:
            return
        if not c.strip():
            raise ValueError(f"TrainConfig.text_corpus must be one of {CORPUS_NAMES} or a JSONL path, got {c!r}")
        if "/" not in c and "\\" not in c and not c.endswith((".jsonl", ".json")) and not c.startswith("~"):
            import difflib

            hint = difflib.get_close_matches(c, CORPUS_NAMES, n=1)
            raise ValueError(
                f"TrainConfig.text_corpus {c!r} is neither a corpus name {CORPUS_NAMES} nor a JSONL path"
                + (f"; did you mean {hint[0]!r}?" if hint else "; fix: give the file's path, e.g. './my_corpus.jsonl'")
            )

    def _check_new_knobs(self) -> None:
        """Random-token data, K bias with d_a learnable dims, relative positions, the MLP kernel (one-line errors)."""
        if self.random_token_pos is not None:
            if not 1 <= self.random_token_pos <= self.seq_len:
                raise ValueError(
                    f"TrainConfig.random_token_pos must be in 1..{self.seq_len} or None, got {self.random_token_pos}"
                )
            last = self.seq_len - self.random_token_pos + 1
            if not 1 <= self.random_token_count <= last:
                raise ValueError(
                    f"TrainConfig.random_token_count must be in 1..{last} (positions {self.random_token_pos}..{self.seq_len}), "
                    f"got {self.random_token_count}"
                )
            span = range(self.random_token_pos, self.random_token_pos + self.random_token_count)
            if self.sink_token and 1 in span:
                raise ValueError("TrainConfig.random_token_pos must be >= 2 with sink_token=True (position 1 is the sink token)")
            if self.fixed_token_pos is not None and self.fixed_token_pos in span:
                raise ValueError(
                    f"TrainConfig.fixed_token_pos ({self.fixed_token_pos}) must lie outside the random tokens "
                    f"(positions {span.start}..{span.stop - 1}); choose one of them for that position"
                )
        elif self.random_token_count != 1:
            raise ValueError("TrainConfig.random_token_count needs random_token_pos (the first random position, e.g. 1)")
        if self.k_bias_dims is not None:
            if not self.k_bias:
                raise ValueError("TrainConfig.k_bias_dims sets the learnable dims of the K bias; fix: k_bias=True")
            if not 1 <= self.k_bias_dims <= self.d_head:
                raise ValueError(f"TrainConfig.k_bias_dims must be in 1..{self.d_head} (d_head) or None, got {self.k_bias_dims}")
            if self.k_bias_dims == self.d_head:  # d_a = d_h is the full K bias: one config, one fingerprint
                object.__setattr__(self, "k_bias_dims", None)
        relative = self.pos in ("relative", "t5")
        if (self.rel_buckets, self.rel_max_distance) != (32, 128) and not relative:
            raise ValueError(
                "TrainConfig.rel_buckets / rel_max_distance set the relative-position buckets; fix: pos='relative' or 't5'"
            )
        if self.rel_buckets < 2:
            raise ValueError(
                f"TrainConfig.rel_buckets must be an integer >= 2 (half exact, half log-spaced), got {self.rel_buckets}"
            )
        if self.rel_max_distance <= self.rel_buckets // 2:
            raise ValueError(
                f"TrainConfig.rel_max_distance must be > rel_buckets // 2 = {self.rel_buckets // 2} "
                f"(where the log-spaced buckets end), got {self.rel_max_distance}"
            )
        if self.kernel == "mlp" and (self.k_bias or self.sink_logit):
            raise ValueError(
                "TrainConfig.kernel='mlp' takes no k_bias / sink_logit (the extra key would bypass phi); fix: kernel='linear'"
            )

    def _check_types(self) -> None:
        """Each field has its annotated type (one-line ValueError naming the field and an example otherwise).

        Integral values are accepted for float fields (``lr=1``) and integral
        floats for int fields (``steps=1e3``, as JSON reads it); both are stored
        in the field's own type, so equal configs have equal fingerprints.
        """
        for f in fields(self):
            v = getattr(self, f.name)
            ann = str(f.type).replace(" ", "")
            optional = ann.endswith("|None")
            kind = ann[: -len("|None")] if optional else ann
            if v is None and optional:
                continue
            ok, value = _coerce(kind, v)
            if not ok:
                what = _KIND_WORDS.get(kind, kind) + (" or None" if optional else "")
                raise ValueError(
                    f"TrainConfig.{f.name} must be {what}, got {v!r} ({type(v).__name__}); e.g. {f.name}={_example(f.name, kind, f.default)}"
                )
            if value is not v:
                object.__setattr__(self, f.name, value)

    # ---------------------------------------------------------------- derived facts
    @property
    def d_head(self) -> int:
        return self.d_model // self.n_heads

    @property
    def resolved_attn_norm(self) -> str:
        """The row normaliser actually used: the kernel's own for ``"auto"``."""
        if self.attn_norm != "auto":
            return self.attn_norm
        return {
            "softmax": "sum",
            "softpick": "sum",
            "sigmoid": "none",
            "elu": "none",
            "relu": "none",
            "linear": "none",
            "mlp": "none",
        }[self.kernel]

    @property
    def metric_score(self) -> str:
        """How the sink metric reads this model's attention (see :func:`sink_interp.metrics.sink_alpha`).

        Softmax (with or without an extra K-bias / sink-logit column, whose
        share then is the sink mass) and softpick are scored as they are;
        un-normalised or rescaled kernels through the proxy ``A / sum A``
        (absolute values for the linear kernel), as in the official evaluation.
        """
        if self.kernel in ("linear", "mlp"):
            return "abs-proxy"
        if self.kernel == "softmax":
            return "softmax" if (self.softmax_alpha == 1.0 and self.softmax_p == 1.0) else "proxy"
        if self.kernel == "softpick":
            return "softmax"
        return "softmax" if self.resolved_attn_norm == "sum" else "proxy"

    @property
    def first_token_pos(self) -> int:
        """1-indexed position of the first data token (2 with a learnable sink token)."""
        return 2 if self.sink_token else 1

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed (validated)."""
        _check_known(changes)
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["betas"] = list(self.betas)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        if not isinstance(d, dict):
            raise ValueError(f"a TrainConfig dict is a JSON object of fields, got {type(d).__name__}")
        _check_known(d)
        return cls(**d)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def fingerprint(self) -> str:
        """Hash of the config without ``name``, ``steps`` and ``ckpt_every`` (it names reproduce's run directories, with the steps).

        Resuming compares whole configs, ``steps`` included (see :func:`sink_interp.training.train`).
        """
        import hashlib

        d = self.to_dict()
        for k in ("name", "steps", "ckpt_every"):
            d.pop(k)
        for k, default in LATER_FIELDS.items():  # knobs added later, at their defaults: the hashes of older runs stay
            if d[k] == default:
                d.pop(k)
        return hashlib.sha256(json.dumps(d, sort_keys=True).encode()).hexdigest()[:16]


# --------------------------------------------------------------------------- fields added later

#: Fields added after run directories were first named by :meth:`TrainConfig.fingerprint`, with their
#: defaults (which leave the model and data as before). At their defaults they are left out of the
#: fingerprint, and a run's stored config without them reads as having them at their defaults, so
#: older run directories keep their names and still resume.
LATER_FIELDS: dict[str, Any] = {
    "random_token_pos": None,
    "random_token_count": 1,
    "rel_buckets": 32,
    "rel_max_distance": 128,
    "k_bias_dims": None,
    "micro_batch": None,
}


def with_later_defaults(d: dict[str, Any]) -> dict[str, Any]:
    """A stored config dict with the :data:`LATER_FIELDS` it lacks filled in at their defaults."""
    return {**LATER_FIELDS, **d}


# --------------------------------------------------------------------------- field checks

_KIND_WORDS = {
    "int": "an integer",
    "float": "a finite number",
    "bool": "true or false",
    "str": "a string",
    "tuple[float,float]": "a pair of numbers",
}

#: the interval each numeric knob not checked elsewhere must lie in, written as its error message prints it.
_RANGES: dict[str, tuple[str, ...]] = {
    "[0, inf)": ("lr", "min_lr", "warmup", "weight_decay", "grad_clip", "seed", "bb_triggers", "bb_bos_num", "fixed_token_id"),
    "(0, inf)": ("adam_eps", "rope_theta", "softmax_alpha", "softmax_p"),
    "[1, inf)": ("bb_vocab", "text_vocab", "data_tokens", "n_kv_heads"),
    "[0, 1)": ("momentum",),
    "[0, 1]": ("bb_delimiter_p",),
}


def _within(v: float, span: str) -> bool:
    """Whether ``v`` lies in the interval ``span`` (e.g. ``"(0, inf)"``: a round bracket leaves its end out)."""
    lo, hi = (float(x) for x in span[1:-1].split(","))
    return (lo < v if span[0] == "(" else lo <= v) and (v < hi if span[-1] == ")" else v <= hi)


def _check_known(d: dict[str, Any]) -> None:
    import difflib

    known = [f.name for f in fields(TrainConfig)]
    unknown = sorted(set(d) - set(known))
    if unknown:
        hints = {u: difflib.get_close_matches(u, known, n=1) for u in unknown}
        hint = "; ".join(f"{u!r}: did you mean {h[0]!r}?" for u, h in hints.items() if h)
        raise ValueError(
            f"unknown TrainConfig fields {unknown}" + (f" ({hint})" if hint else "") + f"; known: {', '.join(known)}"
        )


def _coerce(kind: str, v: Any) -> tuple[bool, Any]:
    """``(ok, value in the field's type)`` for a value of a field of annotated type ``kind``."""
    if kind == "bool":
        return isinstance(v, bool), v
    if kind == "str":
        return isinstance(v, str), v
    if isinstance(v, bool):  # a bool is an int to Python, never a number here
        return False, v
    if kind == "int":
        if isinstance(v, int):
            return True, v
        if isinstance(v, float) and math.isfinite(v) and v.is_integer():
            return True, int(v)
        return False, v
    if kind == "float":
        if isinstance(v, (int, float)) and math.isfinite(v):
            return True, v if type(v) is float else float(v)
        return False, v
    if kind == "tuple[float,float]":
        if not isinstance(v, (tuple, list)) or len(v) != 2:
            return False, v
        items = [_coerce("float", b) for b in v]
        if not all(ok for ok, _ in items):
            return False, v
        pair = tuple(b for _, b in items)
        return True, (v if isinstance(v, tuple) and all(a is b for a, b in zip(v, pair)) else pair)
    return True, v  # an annotation this check does not know: left to the checks below


def _example(name: str, kind: str, default: Any) -> str:
    if kind == "tuple[float,float]":
        return json.dumps(list(default) if isinstance(default, tuple) else [0.9, 0.95]).replace(" ", "")
    if default is None or isinstance(default, type(MISSING)):
        return {"int": "8", "float": "0.5", "bool": "true", "str": "NAME"}.get(kind, "...")
    return json.dumps(default)


# --------------------------------------------------------------------------- presets

_BB = dict(
    task="bb",
    seq_len=64,
    n_layers=2,
    d_model=128,
    n_heads=1,  # Guo et al.: one head per layer; with more heads the spare ones idle on themselves, not on BOS
    d_mlp=256,
    optimizer="adamw",
    lr=3e-3,
    schedule="constant",  # Guo: constant learning rate
    warmup=50,
    betas=(0.9, 0.99),  # Guo
    weight_decay=1e-4,  # Guo
    batch_size=32,
    steps=1000,
    eval_every=100,
    ckpt_every=100,
)

_TEXT = dict(
    task="text",
    seq_len=64,
    n_layers=4,
    d_model=128,
    n_heads=4,
    d_mlp=256,
    lr=3e-3,
    warmup=100,
    betas=(0.9, 0.95),
    weight_decay=0.1,
    batch_size=16,
    steps=1500,
    eval_every=150,
    ckpt_every=150,
)

_GPU = dict(
    _TEXT,  # the text recipe at the paper's scale
    seq_len=2048,
    n_layers=10,
    d_model=768,
    n_heads=8,
    d_mlp=1536,
    text_vocab=32000,
    lr=4e-4,
    warmup=1000,
    batch_size=512,  # the paper's 512 x 2048 tokens per step
    micro_batch=16,  # accumulated: 32 forwards of 16 x 2048 per step fit one 80 GB GPU
    steps=20000,
    eval_every=1000,
    ckpt_every=1000,
    probe_n=100,
)


def _p(base: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return {**base, **kw}


#: Named presets: name -> (description, fields). ``bb-*`` and ``text-*`` run on a CPU in minutes.
PRESETS: dict[str, tuple[str, dict[str, Any]]] = {
    "bb-softmax": ("BB task, softmax attention: the default; a BOS sink with a value drain emerges", _p(_BB)),
    "bb-sigmoid-nonorm": (
        "BB, sigmoid attention without the row normaliser (paper: no sink)",
        _p(_BB, kernel="sigmoid", attn_norm="none"),
    ),
    "bb-sigmoid-norm": (
        "BB, sigmoid attention with the normaliser (paper: the sink comes back)",
        _p(_BB, kernel="sigmoid", attn_norm="sum"),
    ),
    "bb-elu-nonorm": ("BB, elu+1 attention without the normaliser", _p(_BB, kernel="elu", attn_norm="none")),
    "bb-elu-norm": ("BB, elu+1 attention with the normaliser", _p(_BB, kernel="elu", attn_norm="sum")),
    "bb-softpick": ("BB, softpick (Zuhri et al. 2025): rectified softmax", _p(_BB, kernel="softpick")),
    "bb-relu": ("BB, ReLU attention without normaliser (Guo et al.'s mitigation)", _p(_BB, kernel="relu", attn_norm="none")),
    "bb-sgd": ("BB, SGD with momentum instead of AdamW (Guo et al.'s mitigation)", _p(_BB, optimizer="sgd", lr=0.1)),
    "bb-kbias": ("BB, learnable K bias with v* = 0 (paper: the bias takes the sink's role)", _p(_BB, k_bias=True, v_bias="zero")),
    "bb-kvbias": ("BB, learnable K and V biases", _p(_BB, k_bias=True, v_bias="learn")),
    "bb-vbias": ("BB, V bias only (control: the sink stays)", _p(_BB, v_bias="learn")),
    "bb-sink-token": ("BB, learnable sink token prepended", _p(_BB, sink_token=True)),
    "bb-sink-logit": ("BB, learned per-head sink logit (gpt-oss)", _p(_BB, sink_logit=True)),
    "bb-prefix": ("BB, prefix LM with p = 4", _p(_BB, prefix=4)),
    "bb-window": ("BB, sliding-window attention w = 4", _p(_BB, window=4)),
    "bb-fixed-token": ("BB, a fixed token at position 3", _p(_BB, fixed_token_pos=3)),
    "bb-nope": ("BB, no positional encoding", _p(_BB, pos="nope")),
    "bb-alibi": ("BB, ALiBi", _p(_BB, pos="alibi")),
    "bb-learned": ("BB, learned absolute positions", _p(_BB, pos="learned")),
    "bb-sinusoidal": ("BB, sinusoidal absolute positions", _p(_BB, pos="sinusoidal")),
    "bb-postnorm": ("BB, post-norm blocks", _p(_BB, norm="post")),
    "bb-kbias-da": (
        "BB, K bias with d_a = 4 learnable dims (the rest 0) and v* = 0 (paper: d_a 1..64)",
        _p(_BB, k_bias=True, v_bias="zero", k_bias_dims=4),
    ),
    "bb-mlp-nonorm": ("BB, learned MLP kernel phi(q).phi(k) without normaliser (paper: no sink)", _p(_BB, kernel="mlp")),
    "bb-mlp-norm": ("BB, learned MLP kernel with Z = max(|sum|, 1)", _p(_BB, kernel="mlp", attn_norm="max1")),
    "bb-relative": ("BB, relative positions as the official code ran them (+bucket index)", _p(_BB, pos="relative")),
    "bb-t5": ("BB, T5 relative bias (learned per bucket and head)", _p(_BB, pos="t5")),
    "bb-random-first": ("BB, a uniformly random first token (official random_data.py 0..1)", _p(_BB, random_token_pos=1)),
    "text-softmax": ("natural text (shipped corpus, BPE 2048), random windows, softmax", _p(_TEXT)),
    "text-fixed-bos": ("natural text with a fixed BOS at position 1", _p(_TEXT, bos="fixed")),
    "text-sigmoid-nonorm": ("natural text, sigmoid attention without normaliser", _p(_TEXT, kernel="sigmoid", attn_norm="none")),
    "gpu-text-softmax": (
        "the paper's 60M recipe (10 x 768, ctx 2048, lr 4e-4, wd 0.1); needs a large JSONL corpus (text_corpus)",
        _p(_GPU),
    ),
    "gpu-text-sigmoid-nonorm": (
        "the paper's recipe with sigmoid attention without normaliser",
        _p(_GPU, kernel="sigmoid", attn_norm="none"),
    ),
}


def preset(name: str, **overrides: Any) -> TrainConfig:
    """The :class:`TrainConfig` of a named preset, with optional field overrides.

    Example:
        >>> cfg = preset("bb-kbias", steps=200)
        >>> cfg.k_bias, cfg.v_bias, cfg.steps
        (True, 'zero', 200)
    """
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; known presets: {', '.join(PRESETS)}")
    _, kw = PRESETS[name]
    return TrainConfig(name=name, **kw).replace(**overrides)


def preset_table() -> list[dict[str, str]]:
    """``[{name, description}]`` of every preset."""
    return [{"name": k, "description": v[0]} for k, v in PRESETS.items()]


__all__ = ["TrainConfig", "PRESETS", "preset", "preset_table"]
