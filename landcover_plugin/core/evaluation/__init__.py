"""Scoring class rasters against references: confusion matrices, scores, reports."""
