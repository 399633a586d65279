"""The experiment harness: data, runner, metrics, results store, leaderboards, logging, reports."""
