"""Pieces shared by serving and training: typed configs, errors, prompt rendering, base-model loading."""
