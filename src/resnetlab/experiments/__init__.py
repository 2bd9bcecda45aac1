"""The classic experiments, each a function that writes a run folder, and the report renderer."""
