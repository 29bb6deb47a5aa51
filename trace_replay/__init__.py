"""Trace formats, synthetic workloads, analyses and figures (see README.md in this folder)."""

from trace_replay.formats import FORMATS, load_trace
from trace_replay.table import RequestTable, TraceFormatError

__all__ = ["FORMATS", "load_trace", "RequestTable", "TraceFormatError"]
