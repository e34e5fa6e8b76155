"""The laboratory: synthetic tasks, trained toy learners, the demo and the experiments that
``icldistill reproduce`` runs."""
