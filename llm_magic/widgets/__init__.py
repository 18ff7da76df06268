"""Notebook widgets; each module imports anywidget when it is imported itself."""
