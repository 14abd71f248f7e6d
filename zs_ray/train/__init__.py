"""The RL driver: the Trainer's step loop, Ray placement of its actors, checkpoints, and MLflow tracking."""
