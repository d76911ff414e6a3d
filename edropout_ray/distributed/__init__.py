"""EDropout on Ray: population shards, the learner actor, the coordinator, liveness, joining a cluster."""
