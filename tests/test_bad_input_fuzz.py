"""Any value typed for any config key is either taken or refused in one line naming the key.

Hypothesis draws values of every kind a user might type (numbers, words, YAML lists and mappings,
empty strings, nan and inf) for every key that does not name a file, a module or a server; the
recipe then builds as `flowrl train toy KEY=VALUE` would build it. Nothing is trained: these are
the checks that run before anything loads.
"""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowrl.cli_args import resolve_recipe
from flowrl.config import FIELDS, load_config

# Keys whose values name files, modules or servers: a random one may import code or touch the disk.
NAMING_KEYS = {"out", "policy", "prompts", "eval_prompts", "reward", "reward_options", "log_with"}
KEYS = sorted(set(FIELDS) - NAMING_KEYS) + ["method.group_size", "method.num_steps", "method.noise_level"]

scalars = st.one_of(
    st.integers(-(10**12), 10**12),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.sampled_from(["", "nan", "-inf", "1e999", "null", "~", "yes", "0x10", "1_000", "[]", "{}", "[1, 2]", "{a: 1}"]),
    st.text(alphabet=string.ascii_letters + string.digits + "._-:/ ", max_size=12),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(key=st.sampled_from(KEYS), value=scalars)
def test_any_value_is_taken_or_refused_naming_its_key(key, value):
    text = str(value).lower() if isinstance(value, bool) else str(value)
    try:
        load_config(resolve_recipe("toy"), [f"{key}={text}"])
    except ValueError as error:
        message = str(error)
        assert "\n" not in message.strip(), message
        names = (key.split(".")[-1], key.split(".")[0].removesuffix("_options"))  # group_size or method
        assert any(name in message for name in names), (key, text, message)


@pytest.mark.parametrize("key", ["lr", "iterations", "guidance", "method.group_size"])
def test_a_typed_number_in_words_is_refused_by_name(key):
    with pytest.raises(ValueError, match=key.split(".")[-1]):
        load_config(resolve_recipe("toy"), [f"{key}=three"])
