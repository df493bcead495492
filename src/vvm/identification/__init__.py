"""Kornblith et al.'s Table 2 from a sweep (``python -m vvm.identification <sweep dir>``): :mod:`.table`."""

from vvm.identification.table import IdentificationTable, main

__all__ = ["IdentificationTable", "main"]
