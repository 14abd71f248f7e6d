"""The method itself: the tag protocol, rewards, the noise curriculum, the staleness schedule, the RL losses and
advantages, batch layout, the simulator's prompts, the agent loop (rollout) and the search interface every
backend implements. No module here imports Ray, vLLM, omegaconf or MLflow; the config sections they take are
zs_ray.config's dataclasses."""
