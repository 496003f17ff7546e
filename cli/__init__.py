"""The ``statekeeper`` command line: thin click commands over :mod:`statekeeper.command`."""
