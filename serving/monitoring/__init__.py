"""Watching a model in production: input quality, drift, abstention and feedback.

Modules (numpy only, so the export imports the same code the server runs):

* :mod:`.features` -- the per-image features, one implementation for export and server;
* :mod:`.profile` -- the reference profile written at export (``profile.json``);
* :mod:`.quality` -- quality checks with thresholds from the profile, and abstention;
* :mod:`.drift` -- sliding windows per model version and the population stability index;
* :mod:`.feedback` -- true labels reported for earlier requests, running sensitivity/specificity;
* :mod:`.monitor` -- the server's hook into the request path and the Prometheus collector.
"""
