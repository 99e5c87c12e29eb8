"""gmabench: benchmark and scaling suite for Gaussian Mixture Attention (GMA) and its peers."""

__version__ = "0.1.0"
