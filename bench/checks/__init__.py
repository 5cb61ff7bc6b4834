"""Checks of the harness itself: step times against a bare hand-written loop
(`python -m archbench.checks.harness`) and the training feed's cost
(`python -m archbench.checks.feed`)."""
