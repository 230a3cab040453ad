"""Methods that perturb or resample the weights: SAM/ASAM, AWP, R-Drop."""
