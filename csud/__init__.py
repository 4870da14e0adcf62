"""csud: the recording daemon of an Urban Supervision Centre (CSU)."""

__version__ = "0.1.0"
