"""User-facing errors: one line that names the problem and the fix, shown without a traceback."""


class ResnetlabError(Exception):
    """An error in the user's input (name, option, file); the CLI prints it and exits 2."""


def close_matches(word: str, choices: list[str], n: int = 3) -> str:
    """A ' Did you mean ...?' suffix for a misspelt name, or '' when nothing is close."""
    import difflib

    near = difflib.get_close_matches(word, choices, n=n, cutoff=0.6)
    return f" Did you mean {', '.join(near)}?" if near else ""
