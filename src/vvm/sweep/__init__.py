"""A sweep's summary (``python -m vvm.sweep``): :mod:`.records` reads the jobs back from their files,
:mod:`.summary` writes summary.png/pdf/csv (the Hydra callback :class:`SweepSummary`, ``resume``) and
:mod:`.figures` the per-measure and per-analysis figures."""

from vvm.sweep.summary import SweepSummary, main

__all__ = ["SweepSummary", "main"]
