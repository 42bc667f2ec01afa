"""Runtime: the controller, leader election, HTTP server, metrics and Events."""
