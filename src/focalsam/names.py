"""One rule for the names users type: ``"Focal-SAM "`` and ``"focal_sam"`` are one name."""

from __future__ import annotations


def normalize_name(name: str) -> str:
    """Lower case, surrounding spaces dropped, ``-`` and spaces as ``_``.

    >>> normalize_name(" Focal-SAM")
    'focal_sam'
    """
    return name.strip().lower().replace("-", "_").replace(" ", "_")
