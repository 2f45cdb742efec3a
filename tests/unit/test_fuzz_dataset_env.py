"""Any input at all to the batch dataset, blacklist and secrets-file parsers gives rows or a one-line error naming
file:line: never a traceback (property-based, with a fixed seed so CI is reproducible)."""

from __future__ import annotations

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from forkdev.core import dataset, envfiles
from forkdev.core.errors import Failure

FUZZ = settings(max_examples=150, derandomize=True, deadline=None, suppress_health_check=[HealthCheck.too_slow])
LINES = st.lists(
    st.one_of(
        st.text(max_size=80),
        st.from_regex(r"[0-9a-f]{7,40}", fullmatch=True),
        st.builds(lambda s: json.dumps({"commit_hash": s}), st.text(max_size=50)),
        st.builds(lambda k, v: f"{k}={v}", st.text(max_size=20), st.text(max_size=40)),
        st.sampled_from(["{", "[]", '{"commit": 1}', '{"a":' * 2000, "# c", "", "\0", '{"commit": "abcdef0", "x": 1}']),
    ),
    max_size=12,
)


def one_line(exc: Failure, origin: str) -> None:
    text = str(exc)
    assert "\n" not in text and text.startswith(origin), text


@FUZZ
@given(LINES)
def test_the_dataset_parser_gives_rows_or_one_line_naming_the_line(lines):
    try:
        rows = dataset.parse("\n".join(lines), "data.jsonl")
    except Failure as exc:
        one_line(exc, "data.jsonl:")
        return
    assert all(dataset.SHA.match(r.commit) and r.where.startswith("data.jsonl:") for r in rows)


@FUZZ
@given(LINES)
def test_the_blacklist_parser_gives_shas_or_one_line(lines):
    try:
        found = dataset.blacklist("\n".join(lines), "blacklist")
    except Failure as exc:
        one_line(exc, "blacklist:")
        return
    assert all(dataset.SHA.match(s) for s in found)


@FUZZ
@given(LINES)
def test_the_secrets_parser_gives_variables_or_one_line(lines):
    try:
        found = envfiles.parse("\n".join(lines), "hf.env")
    except Failure as exc:
        one_line(exc, "hf.env:")
        return
    assert all(envfiles.KEY.match(v.key) and "\0" not in v.value for v in found)
