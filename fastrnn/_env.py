"""Reading fastrnn's environment settings: the one parser of on/off flags."""
import os

__all__ = ["flag", "FALSE_VALUES"]

#: values that leave a flag off (case and surrounding spaces ignored); anything else is on
FALSE_VALUES = ("", "0", "false", "no", "off")


def flag(name):
    """Whether environment variable ``name`` is set to an "on" value: unset, empty, 0,
    false, no and off are off; every other value (1, true, yes, on, ...) is on."""
    return os.environ.get(name, "").strip().lower() not in FALSE_VALUES
