"""Sweeps: suite loading and validation, planning the grid, the runner and its workers.

Importing this package must not import torch: spawned workers import it before they choose
their GPU (CUDA_VISIBLE_DEVICES has to be set before CUDA is initialised).
"""
