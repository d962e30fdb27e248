"""Torch-free facts and files every layer reads: errors, file I/O, progress, profiles, the manifest, plan arithmetic,
the model families and graph lint. Imports nothing else from the project."""
