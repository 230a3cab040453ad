"""Adversarial training: FGM, PGD, FreeLB, FreeFGM on an embedding; VAT."""
