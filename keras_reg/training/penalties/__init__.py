"""Gradient penalties (embedding, parameter, input) and noise training."""
