class CliError(Exception):
    """A problem the user can fix: the command line prints its message on one line and exits 1."""


class OtherRankFailed(CliError):
    """Another process of a torchrun job failed and said why: this one exits 1 without a word."""


def one_line(error):
    """The message of a CliError or an OSError, on one line."""
    if isinstance(error, OSError) and error.strerror and error.filename:
        return f"{error.filename}: {error.strerror}"
    text = str(error)
    # a DataLoader worker's error carries the worker's traceback; its last line is the error
    if "Original Traceback" in text:
        text = text.strip().splitlines()[-1].split(": ", 1)[-1]
    return " ".join(text.split())
