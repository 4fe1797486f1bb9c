"""The federation at run time: the round loop, nodes, the gate, events, checkpoints, the
message exchange, the runner and the ServerApp."""
