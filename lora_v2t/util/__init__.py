"""Ground floor: errors, file locks and vector helpers that every other layer uses."""
