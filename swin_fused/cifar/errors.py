class CliError(Exception):
    """A problem the user can fix: the command line prints its message on one line and exits 1."""
