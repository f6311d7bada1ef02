"""On-disk contracts: the featurize output (schema, windows, tracks, recipe), the score output, the model bundle."""
