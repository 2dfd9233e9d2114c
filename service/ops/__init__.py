"""Operating a running system: the operator commands that list, show and re-queue rows."""
