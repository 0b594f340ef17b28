"""Run folders as read after training: loading a run, reports, the paper-layout table, figures."""
