"""The one exception type for errors a user can cause; the CLI turns it into a message and exit 1."""


class EdgeasrError(Exception):
    """A problem with the user's input (a path, a file, a layer, a setting), stated plainly."""
