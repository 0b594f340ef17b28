"""The `benchmark` command: step time, memory, selection and inference cost per configuration."""
