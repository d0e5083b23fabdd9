"""Training: the trainer, data and pairs, checkpoints, the run folder (lock, log, signals), cost estimate."""
