"""The web process: the app factory, the webhook route, health and OAuth routes."""
