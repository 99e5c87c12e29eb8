"""Tests for gmabench.gma (the GMA op, its implementations and the GMA layer)."""
