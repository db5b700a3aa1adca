"""The one error of `dit_cache.convert`."""


class ConvertError(ValueError):
    """The checkpoint cannot be converted (bad file, unknown or partial layout, bad config)."""

