"""Lightning glue: the training task, the gate callback, checkpoint I/O and the run orchestration."""
