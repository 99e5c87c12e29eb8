"""Measurement: timing, memory, clocks and environment capture. Knows nothing of records."""
