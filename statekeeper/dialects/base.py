"""The interface every target dialect implements."""

from __future__ import annotations


class Dialect:
    """One backend's ways. Instances are stateless singletons from the registry."""

    #: SQLAlchemy backend name, the registry key
    name: str = ""
    #: backup methods that can back up and restore this kind of target; the first is the default
    backup_methods: tuple[str, ...] = ()

    @property
    def default_backup_method(self) -> str:
        return self.backup_methods[0]

    def __repr__(self) -> str:
        return f"<{type(self).__name__}>"
