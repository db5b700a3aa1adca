"""The bench's two error types (a leaf module: runners and method specs both raise them)."""


class BenchInputError(ValueError):
    """Bad bench input (model, method, option, setting): reported before any heavy work."""


class PeerUnavailable(Exception):
    """A peer method cannot run on this model/setting: reported as an `n/a: reason` row."""
