"""The SPMD runtime of rlhf-run: launching workers, health, walking the plan's call order."""
