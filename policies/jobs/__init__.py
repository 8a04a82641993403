"""The learning jobs' entry points (Hydra main + stage wiring): `train` (stepwise-train) and
`reset_free` (stepwise-train-reset-free)."""
