"""The method itself, free of Ray, vLLM, omegaconf and MLflow: the tag protocol, rewards, the noise curriculum,
the staleness schedule, the RL losses and advantages, batch layout, the simulator's prompts, the agent loop
(rollout) and the search interface every backend implements."""
