"""V: the ConvVAE (Keras), its numpy encoder twin for rollouts, stages 2 (train) and 3 (encode series)."""

KL_TOLERANCE = 0.5
"""Free bits: the per-sample KL is floored at KL_TOLERANCE · z_size (WME: vae.py `kl_tolerance`)."""
