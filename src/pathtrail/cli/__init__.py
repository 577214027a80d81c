"""The `pathtrail` command (`main`): validate, verify, trail."""
