"""`mmssl report`: one self-contained HTML page (and the PNGs beside it) from output folders' logs and metrics."""
