"""``crossearth-gate study``: a matrix of configs × protocols × seeds, each cell one ``fit`` run.

The study reads run artefacts and starts ``fit`` in subprocesses; training code never imports it.
"""
