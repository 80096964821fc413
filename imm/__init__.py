"""Inductive Moment Matching (Zhou, Ermon, Song, ICML 2025) and its baselines, in pure PyTorch."""
