"""One cell from config to result.json: the shared training loop with its checkpoints, cell execution, experiment
tracking and the torch.compile choice."""
