"""Tiny VLMs trained here on a procedural shapes VQA task, so pruning methods can be scored on accuracy."""
