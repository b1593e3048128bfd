"""``histoedge serve`` flags are generated from :class:`ServerSettings`, help text included."""

from __future__ import annotations

import re

import pytest

import histoedge.cli
from histoedge import HistoedgeError
from histoedge.serving.settings import ServerSettings


def test_serve_help_lists_exactly_the_settings_fields(capsys):
    with pytest.raises(SystemExit):
        histoedge.cli.main(["serve", "--help"])
    text = capsys.readouterr().out
    flags = set(re.findall(r"^\s{2}(--[a-z0-9-]+)", text, re.M)) - {"--help"}
    assert flags == {"--" + f.name.replace("_", "-") for f in ServerSettings.options()}
    for option in ServerSettings.options():
        assert ServerSettings.env_name(option) in text.replace("\n", " ").replace("  ", "")


def test_flags_reach_the_settings_with_their_types(monkeypatch):
    parser = histoedge.cli.build_parser()
    args = parser.parse_args(["serve", "--repo", "m", "--port", "9", "--max-queue-delay-ms", "0.5",
                              "--no-batching"])
    settings = ServerSettings.from_sources(vars(args), environ={"HISTOEDGE_PORT": "7", "HISTOEDGE_THREADS": "3"})
    assert (settings.port, settings.max_queue_delay_ms, settings.no_batching, settings.threads) == (9, 0.5, True, 3)
    with pytest.raises(HistoedgeError, match="--port"):
        ServerSettings.from_sources(vars(parser.parse_args(["serve", "--port", "eighty"])), environ={})
