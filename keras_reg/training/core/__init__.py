"""The protocol, the installer, schedules, perturbation sites and shared maths."""
