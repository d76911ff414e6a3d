"""What a run leaves behind: checkpoints, storage, history, plots, the report, latency, exported models."""
