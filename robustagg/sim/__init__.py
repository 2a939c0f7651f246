"""Simulators of the lines of work on the built-in data (scikit-learn's digits)."""
