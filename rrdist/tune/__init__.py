"""Ray Tune sweeps: YAML search spaces, trials (pretraining + evaluations), the results table."""
