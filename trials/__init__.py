"""Data, training loop and the trial that Ray Tune runs."""
