"""Example scripts: a leaderboard agent and a stock-client synchronous-mode script with neural cameras."""
