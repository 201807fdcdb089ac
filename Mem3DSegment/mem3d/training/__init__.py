"""Training of the compact STM: case lists, objects, clip sampling, the loop and export."""
