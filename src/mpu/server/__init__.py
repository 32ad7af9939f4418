"""The server (model owner): secrets, noise, Pre-Process, validation, Post-Process, round state.

The client never imports this package: what it knows of the server is the published files.
"""
