"""Rules: the rule language, the engine that enqueues action runs, the handler registry."""
