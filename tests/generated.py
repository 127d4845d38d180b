"""Committed outputs that a test compares against carry the versions they were generated under.

A page such as ``docs/support.md`` is the record of one run, and its text depends on the library versions
installed (which engine a family may use, for instance). So it ends with a stamp line naming those versions,
and a test compares it exactly only when the installed versions are the stamped ones (the versions of
``requirements-lock.txt``, which README command 2 and ``.ci/run`` install). Under other versions the test
regenerates it and fails only on a real contradiction, else skips with a reason that names both sets.

Example:
    >>> line = stamp_line({"torch": "2.13.0", "transformers": "5.25.0"})
    >>> line
    '<!-- generated under torch 2.13.0, transformers 5.25.0 -->'
    >>> read_stamp("# Page\\n" + line + "\\n")
    {'torch': '2.13.0', 'transformers': '5.25.0'}
    >>> differences({"torch": "2.13.0"}, {"torch": "2.14.1"})
    'torch 2.13.0 (stamped) vs 2.14.1 (installed)'
"""

from __future__ import annotations

import re
from importlib import metadata

#: the distributions whose versions change what the generated pages say
STAMPED = ("torch", "transformers", "transformer-lens", "numpy")

_STAMP = re.compile(r"<!-- generated under (.+?) -->")


def installed_versions(names: tuple[str, ...] = STAMPED) -> dict[str, str]:
    """``{distribution: version}`` as installed, local labels dropped (``2.13.0+cpu`` -> ``2.13.0``)."""
    out = {}
    for name in names:
        try:
            out[name] = metadata.version(name).split("+")[0]
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def stamp_line(versions: dict[str, str] | None = None) -> str:
    """The line a generated page ends with (an HTML comment: invisible on the site, plain in the file)."""
    v = installed_versions() if versions is None else versions
    return "<!-- generated under " + ", ".join(f"{k} {x}" for k, x in v.items()) + " -->"


def read_stamp(text: str) -> dict[str, str] | None:
    """The versions a page's stamp line names; ``None`` when it has none."""
    m = _STAMP.search(text)
    if m is None:
        return None
    return dict(part.strip().rsplit(" ", 1) for part in m.group(1).split(","))  # type: ignore[misc]


def differences(stamped: dict[str, str] | None, installed: dict[str, str]) -> str:
    """One line naming the versions that differ ('' when none)."""
    if stamped is None:
        return "the page has no version stamp"
    keys = list(dict.fromkeys([*stamped, *installed]))
    return ", ".join(
        f"{k} {stamped.get(k, 'absent')} (stamped) vs {installed.get(k, 'absent')} (installed)"
        for k in keys
        if stamped.get(k) != installed.get(k)
    )
