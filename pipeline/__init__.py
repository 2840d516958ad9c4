"""Workflows of hippogan: manifests, GAN training, inference, metrics and the command line."""
