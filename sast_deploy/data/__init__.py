"""Stage 1, data: event datasets (generated or real, through tonic) as binary spike frames."""
