"""The one exception type of the PKI library."""


class PkiError(Exception):
    """A failure explained in one line of plain text; the CLI prints it and exits non-zero."""
