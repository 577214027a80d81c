"""Stacking ensembles: a meta-learner fitted on base models' validation-split probabilities."""
