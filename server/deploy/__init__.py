"""A real deployment: provisioning, kits, certificates, the coordinator, submitting runs and
the Flower App it submits."""
