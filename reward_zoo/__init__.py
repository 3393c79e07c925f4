"""reward_zoo: image reward models (scorers) behind one interface, loaded from local weights."""
