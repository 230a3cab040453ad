"""Multi-task loss balancing."""
