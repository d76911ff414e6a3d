"""Training with a state: one EDropout step, the learner's backprop, the epoch loop, a run's setup."""
