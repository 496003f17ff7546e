"""The version, in a module of its own so that any module may import it without importing the
package's public API (statekeeper/__init__.py), which imports the verbs."""

__version__ = "0.1.0"
