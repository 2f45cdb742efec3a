"""The crontab line as text: a value becomes one shell word that cron hands the shell unchanged, or is refused; our
line is edited in place and every other byte of the crontab stays; schedules as cron reads them."""

from __future__ import annotations

import shlex

import pytest
from hypothesis import given
from hypothesis import strategies as st
from support import crond

from forkdev import cron
from forkdev.core.errors import Failure

MARK = "# forkdev nightly (vllm)"


def test_the_port_of_crons_loop_reads_percent_as_cron_does():
    assert crond("a\\%b%stdin") == "a%b"
    assert crond("a\\\\%b") == "a\\\\"  # an escaped backslash does not escape the % after it
    assert crond("'x'\\%y") == "'x'%y"


@given(st.text(st.characters(blacklist_characters="\0\n\r", blacklist_categories=("Cs",))))
def test_any_value_without_a_line_break_reaches_the_shell_as_one_word_exactly(value):
    written = cron.word(value, "x")
    assert "\n" not in written and "\r" not in written
    assert shlex.split(crond(written)) == [value]
    assert crond(written) == cron.as_cron_runs_it(written)


@pytest.mark.parametrize("value", ["a\nb", "a\rb", "a\0b", "\n* * * * * touch /tmp/x"])
def test_a_line_break_or_nul_is_refused_naming_the_value(value):
    with pytest.raises(Failure, match=r"INVOKE_X '.*' holds a line break or NUL, which would start another crontab"):
        cron.word(value, "INVOKE_X")


@given(st.lists(st.text(st.characters(blacklist_characters="\n", blacklist_categories=("Cs",))), max_size=8))
def test_every_other_line_stays_byte_for_byte_where_it_was(theirs):
    theirs = [line for line in theirs if not line.endswith(MARK)]
    text = "\n".join(theirs) + ("\n" if theirs else "")
    ours = f"0 2 * * * job {MARK}"
    installed, found = cron.edit(text, "vllm", ours)
    assert found == 0 and installed == text + ours + "\n"
    assert cron.edit(installed, "vllm", None) == (text, 1)


def test_our_line_is_replaced_where_it_was_and_a_duplicate_goes():
    text = f'FOO = "spaced value"\n0 1 * * * old {MARK}\n0 0 * * 7\t/bin/true  \n0 3 * * * older {MARK}\nMAILTO=a\n'
    installed, found = cron.edit(text, "vllm", f"0 2 * * * new {MARK}")
    assert found == 2
    assert installed == f'FOO = "spaced value"\n0 2 * * * new {MARK}\n0 0 * * 7\t/bin/true  \nMAILTO=a\n'
    assert cron.edit(installed, "vllm", None)[0] == 'FOO = "spaced value"\n0 0 * * 7\t/bin/true  \nMAILTO=a\n'
    assert cron.edit("no newline at the end", "vllm", "L # x")[0] == "no newline at the end\nL # x\n"


@pytest.mark.parametrize(
    "schedule",
    ["0 2 * * *", "@weekly", "@reboot", "*/15 0-6 * * 1-5", "0 0 * * 7", "5,10-20/3 * 1 jan-MAR mon-fri", "0 0 31 2 *"],
)
def test_a_crontab_schedule_is_taken_as_written(schedule):
    assert cron.valid_schedule(schedule) == schedule


@pytest.mark.parametrize(
    ("schedule", "why"),
    [
        ("every night", "it has 2 fields, not 5"),
        ("* * *", "it has 3 fields, not 5"),
        ("0 2 * * * extra", "it has 6 fields, not 5"),
        ("@nightly", "cron's @ names are"),
        ("60 * * * *", "the minute field has '60' (from 0 to 59"),
        ("* 24 * * *", "the hour field has '24'"),
        ("* * 0 * *", "the day of month field has '0'"),
        ("* * * 13 *", "the month field has '13'"),
        ("* * * * 8", "the day of week field has '8'"),
        ("*/0 * * * *", "a step of 1 or more"),
        ("5/10 * * * *", "a step of 1 or more, after '*' or a range"),
        ("5-1 * * * *", "the lower first"),
        ("mon * * * *", "the minute field has 'mon'"),
        ("1, * * * *", "the minute field has ''"),
        ("0 2 * * *%x", "the day of week field has '*%x'"),
    ],
)
def test_a_bad_schedule_is_one_sentence_saying_which_field(schedule, why):
    with pytest.raises(Failure, match=r"--schedule '.*' is not a crontab schedule \(") as exc:
        cron.valid_schedule(schedule)
    assert why in str(exc.value)


@pytest.mark.parametrize("target", ["vllm\n* * * * * x", "a%b", "-x", "a b"])
def test_a_target_that_cannot_name_a_crontab_line_is_refused(target):
    with pytest.raises(Failure, match="cannot name a crontab entry"):
        cron.marker(target)
