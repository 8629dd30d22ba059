"""The Ray data service: decoder actors, the per-rank client and connecting ranks to a cluster."""
