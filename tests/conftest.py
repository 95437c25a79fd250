"""Suite-wide fixtures: the DearDiary test server (``deardiary_server``,
``deardiary_server_factory``)."""

pytest_plugins = ["tests.deardiary_server.fixtures"]
