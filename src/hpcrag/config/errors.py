"""ConfigError: a configuration problem located by file and key path."""

from pathlib import Path

from hpcrag.errors import HpcragError


class ConfigError(HpcragError):
    """A problem in one configuration file, at one key path."""

    def __init__(self, file: Path | str, key_path: str, problem: str) -> None:
        self.file = str(file)
        self.key_path = key_path
        self.problem = problem
        where = f"{self.file}: {key_path}" if key_path else self.file
        super().__init__(f"{where}: {problem}")
