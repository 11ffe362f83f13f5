"""Exceptions the engine raises; each message is one sentence a user can act on."""


class LandcoverError(Exception):
    """Base class of every error the engine reports to users."""


class ModelFileError(LandcoverError):
    """A model file that cannot be used: unreadable, unsafe or inconsistent."""


class InputError(LandcoverError):
    """Input raster, parameters or files that do not fit the model or the job."""


class Cancelled(LandcoverError):
    """The caller asked to stop; outputs have been removed."""
