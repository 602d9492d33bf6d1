"""Widgets of the viewer: heatmaps, tables, filter bars, the prompt panel, plots, help."""
