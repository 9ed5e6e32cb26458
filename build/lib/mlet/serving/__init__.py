"""Serving: export of a trained (collapsed) model."""
