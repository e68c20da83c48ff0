"""Stages 2-4, training: recipes, LIF networks, the SAST optimizer and its baselines, evaluation and run directories."""
