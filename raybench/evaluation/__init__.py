"""Evaluation metrics (semantic segmentation, detection)."""
