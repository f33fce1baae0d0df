"""Loss functions and advantage estimators of the RLHF algorithms (pure tensor math)."""
