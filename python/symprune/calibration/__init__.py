"""Calibration and layer streaming, for the data-aware methods: the statistics
of every linear's inputs and outputs (:mod:`.stats`), a causal LM run one
decoder layer at a time straight from its shards (:mod:`.streaming`), the
sequential calibrate → prune → write → re-run loop (:mod:`.pipeline`), and
data-parallel calibration on torch.distributed (:mod:`.distributed`)."""
