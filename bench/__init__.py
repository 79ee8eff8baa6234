"""piewire's benchmark: piewire and naive baselines under the same load."""
