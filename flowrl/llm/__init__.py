"""Text RL for causal language models on the toolkit's core: the same trainer loop, advantage
estimators, losses, run files and launch as the image side; what differs lives here (the policy
and its rollout, the token objective, text rewards and prompts)."""
