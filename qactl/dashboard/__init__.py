"""The live dashboard's data: the snapshot model, its source, and the probes of each system."""
