"""The reliability suite of issue 10: the service under faults from outside (fuzzed requests,
slow clients, killed processes, a stopped database), each test stating what must still hold."""
