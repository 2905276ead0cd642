"""Strategy options: typed from the factory's keyword-only parameters, checked up front."""

from typing import Literal

import pytest

from tlplug.errors import OptionError
from tlplug.plugins.options import coerce, options_of, parse_assignments, resolve_options


def factory(
    groups,
    epochs,
    *,
    count: int = 1,
    rate: float = 0.5,
    on: bool = False,
    sizes: tuple[int, ...] = (4,),
    mode: Literal["a", "b"] = "a",
    limit: int | None = None,
):
    """A factory with one option of each supported type."""


def needs(groups, *, at: tuple[int, ...]):
    """A factory with a required option."""


def test_options_are_keyword_only_parameters():
    assert list(options_of(factory)) == ["count", "rate", "on", "sizes", "mode", "limit"]
    assert options_of(factory)["sizes"].describe() == "sizes=4 (comma-separated ints)"


def test_strings_from_the_command_line_are_typed():
    given = {
        "count": "3",
        "rate": "1e-2",
        "on": "yes",
        "sizes": "4096,4096",
        "mode": "b",
        "limit": "none",
    }
    assert resolve_options(factory, given, "x") == {
        "count": 3,
        "rate": 0.01,
        "on": True,
        "sizes": (4096, 4096),
        "mode": "b",
        "limit": None,
    }


def test_python_values_pass_through_checked():
    assert resolve_options(factory, {"sizes": [1, 2], "limit": 7}, "x") == {
        "sizes": (1, 2),
        "limit": 7,
    }


def test_unknown_option_names_the_valid_ones():
    with pytest.raises(OptionError, match="no option 'cout'; did you mean 'count'.*rate=0.5"):
        resolve_options(factory, {"cout": "2"}, "schedule 'x'")


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("count", "two", "must be an integer"),
        ("count", 2.5, "must be an integer"),
        ("on", "maybe", "true or false"),
        ("mode", "c", "one of a, b"),
        ("rate", True, "must be a finite number"),
        ("rate", "nan", "must be a finite number"),
    ],
)
def test_bad_values_are_clear_errors(key, value, message):
    with pytest.raises(OptionError, match=message):
        resolve_options(factory, {key: value}, "x")


def test_required_option_missing():
    with pytest.raises(OptionError, match="needs option"):
        resolve_options(needs, {}, "schedule 'needs'")
    assert resolve_options(needs, {"at": "5,10"}, "x") == {"at": (5, 10)}


def test_parse_assignments():
    assert parse_assignments(["a=1", " b = x,y "], "--opt") == {"a": "1", "b": "x,y"}
    with pytest.raises(OptionError, match="--head-opt expects KEY=VALUE, got 'oops'"):
        parse_assignments(["oops"], "--head-opt")


def test_coerce_float_list():
    assert coerce("0.35,1", tuple[float, ...], "x") == (0.35, 1.0)
