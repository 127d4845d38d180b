"""The paper's findings, one module per group of the talk (optimisation, data, loss, attention, architecture, biases).

:data:`FINDINGS` lists them in the table's order; each is a :class:`~..finding.Finding`.
"""

from __future__ import annotations

from ..finding import Finding
from . import architecture, attention, biases, data, loss, optimisation

#: name -> finding, in the table's order
FINDINGS: dict[str, Finding] = {
    f.name: f for group in (optimisation, data, loss, biases, attention, architecture) for f in group.FINDINGS
}

__all__ = ["FINDINGS"]
