"""``python -m waltzlit evaluate``: the deployed system and the paper's baselines (Table 1)."""
