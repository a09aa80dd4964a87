"""What data loading raises and warns: shared by data.py and the readers it calls (folder.py), so neither imports the other."""


class DataError(ValueError):
    """The data set cannot be built (bad data.path, nothing usable); the message says what was found."""


class DataWarning(UserWarning):
    """Something in the data was skipped or rebuilt; training goes on."""
