"""Layer 5: predictions, calibration and validation built on shape-only runs of the mesh programs."""
