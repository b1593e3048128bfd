"""Tests of the benchmark scripts' own logic (bench/), kept cheap: no servers, no peers installed."""
