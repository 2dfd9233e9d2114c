"""Rules: the rule language (with its checks and templates), the engine that enqueues action
runs, and the handler registry."""
