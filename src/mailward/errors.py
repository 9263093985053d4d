"""The one exception family for the unexpected; expected outcomes are enums."""


class MailwardError(Exception):
    """Base of every error Mailward raises on purpose."""


class ConfigError(MailwardError):
    """A configuration file is unreadable or a key has a bad value."""

    def __init__(self, source: str, key: str, problem: str):
        self.source, self.key, self.problem = source, key, problem
        where = f"{source}: {key}" if key else source
        super().__init__(f"{where}: {problem}")


class StoreError(MailwardError):
    """The quarantine store could not keep a message: the milter must not accept it."""


class ArtifactError(MailwardError):
    """A model or rule artifact is missing, corrupt, or does not match its checksum."""


class ScanFailed(MailwardError):
    """A scanner could not answer (a worker died or reported an error); the policy's on_error applies."""
