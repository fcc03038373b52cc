"""Raw text sources -> Document records (the unit every later pipeline stage works on)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class Document:
    text: str
    id: str = ""  # stable id within its source (e.g. relative path, line number)
    source: str = ""  # provenance: file path, dataset name ...
    meta: dict[str, Any] = field(default_factory=dict)
