"""Pure step functions (norse style): the neuron equations live in :mod:`.lif`."""
