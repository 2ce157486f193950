"""Learned predictors that steer decoding (Budget Guidance's remaining-length model)."""
