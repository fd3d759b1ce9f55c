"""Every command's --help reads as plain text: argparse %-formats help strings and usage but not
descriptions, so a '%%' written for one shows up literally in the other."""
import argparse

from clipimo.cli.app import build_parser


def every_parser(parser: argparse.ArgumentParser):
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from every_parser(sub)


def test_no_help_text_shows_a_doubled_percent_sign():
    parsers = list(every_parser(build_parser()))
    progs = {p.prog for p in parsers}
    assert {"clipimo", "clipimo evaluate", "clipimo train", "clipimo train dino"} <= progs
    shown = {p.prog: p.format_help() for p in parsers}
    assert not [prog for prog, text in shown.items() if "%%" in text]
    assert "top-1 (%)" in shown["clipimo evaluate"]
